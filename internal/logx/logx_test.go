package logx

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type buf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buf) lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(b.b.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func TestRepeatedLogsOncePerInterval(t *testing.T) {
	var out buf
	r := NewRepeated(slog.New(slog.NewTextHandler(&out, nil)), slog.LevelWarn, "publish failed", 50*time.Millisecond)
	for range 500 {
		r.Log("topic", "chat:1:2")
	}
	if n := len(out.lines()); n != 1 {
		t.Fatalf("500 failures in a burst logged %d lines, want 1", n)
	}
	time.Sleep(60 * time.Millisecond)
	r.Log("topic", "chat:1:2")
	l := out.lines()
	if len(l) != 2 || !strings.Contains(l[1], "repeats=499") {
		t.Fatalf("second line should count the 499 suppressed: %q", l)
	}
	r.Log()
	r.Flush()
	if l := out.lines(); len(l) != 3 || !strings.Contains(l[2], "repeats=1") {
		t.Fatalf("Flush should log the leftover count: %q", l)
	}
}

func TestOutageStartAndEnd(t *testing.T) {
	var out buf
	o := NewOutage(slog.New(slog.NewTextHandler(&out, nil)), "store")
	o.OK()
	for range 1300 {
		o.Fail(errors.New("connection refused"))
	}
	o.OK()
	o.OK()
	l := out.lines()
	if len(l) != 2 || !strings.Contains(l[0], "store outage started") || !strings.Contains(l[1], "store outage ended") || !strings.Contains(l[1], "failures=1300") {
		t.Fatalf("want one start and one end line with the count: %q", l)
	}
}

func TestPrintf(t *testing.T) {
	var out buf
	p := NewPrintf(slog.New(slog.NewTextHandler(&out, nil)), time.Minute)
	for range 100 {
		p.Printf(context.Background(), "redis: discarding bad PubSub connection: %v", errors.New("EOF"))
	}
	p.Printf(context.Background(), "sentinel: new master=%q", "m")
	if l := out.lines(); len(l) != 2 || !strings.Contains(l[0], "EOF") {
		t.Fatalf("want one line per format: %q", l)
	}
}
