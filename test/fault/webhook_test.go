package fault

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/webhook"
)

// TestWebhookKill9MidDelivery kills the node binary with SIGKILL while the
// receiver holds its POST unanswered, and restarts it on the same
// database: the event is delivered again, with the same event id, once
// the dead node's lease has run out.
func TestWebhookKill9MidDelivery(t *testing.T) {
	const secret = "fault-webhook-secret-0123456789"
	db := testenv.Postgres(t)

	type hit struct {
		id, attempt string
		sigErr      error
		users       string
	}
	var (
		mu      sync.Mutex
		hits    []hit
		release = make(chan struct{})
		first   = make(chan struct{})
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var b webhook.Body
		json.Unmarshal(raw, &b) //nolint:errcheck
		h := hit{id: r.Header.Get(webhook.HeaderEventID), attempt: r.Header.Get(webhook.HeaderAttempt), users: b.UserID,
			sigErr: webhook.Verify([]byte(secret), r.Header.Get(webhook.HeaderSignature), raw, webhook.DefaultTolerance, time.Now())}
		mu.Lock()
		hits = append(hits, h)
		n := len(hits)
		mu.Unlock()
		if n == 1 {
			close(first)
			<-release // hold the first delivery until the node is dead
		}
	})}
	go srv.Serve(ln) //nolint:errcheck
	defer srv.Close()
	defer close(release)

	addr := freeAddr(t)
	const key = "fault-api-key"
	args := []string{"--api-key", key, "--webhook-url", "http://" + ln.Addr().String() + "/hook", "--webhook-secret", secret,
		"--notify-after", "300ms", "--webhook-timeout", "1s"}
	node := startProc(t, addr, db, args...)
	req, _ := http.NewRequest("POST", "http://"+addr+"/api/v1/messages",
		strings.NewReader(`{"from":"alice","to":"bob","body":"ping","client_id":"k9"}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("post message: %v %v", err, resp)
	}
	resp.Body.Close()

	select {
	case <-first:
	case <-time.After(wait):
		t.Fatal("no POST within the wait")
	}
	faultsTried.Add(1)
	node.signal(t, syscall.SIGKILL)
	node.waitExit(t, wait)
	killed := time.Now()
	startProc(t, addr, db, args...)
	// Lease: 3 × 1s + 5s.
	if !phxtest.WaitFor(30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(hits) >= 2 }) {
		t.Fatal("the event was not delivered after the restart")
	}
	t.Logf("redelivered %v after the kill", time.Since(killed).Round(100*time.Millisecond))
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(hits) != 2 {
		t.Errorf("receiver got %d POSTs, want 2 (the one in flight at the kill, one after)", len(hits))
	}
	for _, h := range hits {
		if h.sigErr != nil || h.users != "bob" || h.id != hits[0].id {
			t.Errorf("POST %+v; want bob's event %s, signed", h, hits[0].id)
		}
	}
	if len(hits) >= 2 && hits[1].attempt != "2" {
		t.Errorf("redelivery is attempt %s, want 2", hits[1].attempt)
	}
}
