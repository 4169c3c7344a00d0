package fault

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elchat/elchat/internal/phxtest"
	"github.com/elchat/elchat/internal/testenv"
	"github.com/elchat/elchat/pkg/topic"
)

// joinAll joins every topic on c with pipelined joins and waits for all
// replies to be ok. Other frames are kept in c.Pushes.
func joinAll(c *phxtest.Client, topics []string, timeout time.Duration) error {
	refs := map[string]bool{}
	for _, t := range topics {
		ref := c.NextRef()
		refs[ref] = true
		if err := c.WriteText(phxtest.Encode(ref, ref, t, "phx_join", nil)); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(timeout)
	for len(refs) > 0 {
		f, err := c.ReadFrame(time.Until(deadline))
		if err != nil {
			return fmt.Errorf("%d joins unanswered: %w", len(refs), err)
		}
		if f.Event != "phx_reply" || !refs[f.Ref] {
			continue // presence frames of the joins: not needed here
		}
		var r phxtest.Reply
		if err := json.Unmarshal(f.Payload, &r); err != nil || r.Status != "ok" {
			return fmt.Errorf("join %s: %s %s", f.Topic, r.Status, r.Reason())
		}
		delete(refs, f.Ref)
	}
	return nil
}

// TestKill9With30000Presences kills a node binary holding 30,276 chat
// presences (174 sockets in 174 chats each) with SIGKILL. Every chat's
// other member sits on a second node: each must get the leave of the
// dead node's user, within --presence-ttl plus a heartbeat period plus
// the sweep, and a fresh join must show no ghost.
func TestKill9With30000Presences(t *testing.T) {
	if testing.Short() || os.Getenv("ELCHAT_SKIP_BIG") != "" {
		t.Skip("30,000 presences")
	}
	side := 174 // side² = 30,276 chats
	if v, err := strconv.Atoi(os.Getenv("ELCHAT_SWEEP_SIDE")); err == nil {
		side = v
	}
	const ttl = 6 * time.Second
	db := testenv.Postgres(t)
	rdb := testenv.Redis(t)
	args := []string{"--redis-url", rdb, "--presence-ttl", ttl.String(), "--max-channels", "200",
		"--push-rate", "100000", "--push-burst", "100000", "--max-conns-per-user", "0", "--request-queue", "256", "--log-level", "info"}
	dead := startProc(t, freeAddr(t), db, args...)
	live := startProc(t, freeAddr(t), db, args...)
	user := func(side string, i int) string { return side + strconv.Itoa(i) }
	chats := func(self string, i int, other string) []string {
		out := make([]string, side)
		for k := range out {
			out[k] = topic.ChatName(user(self, i), user(other, k))
		}
		return out
	}
	connectAll := func(addr, self, other string) []*phxtest.Client {
		clients := make([]*phxtest.Client, side)
		var wg sync.WaitGroup
		errs := make(chan error, side)
		sem := make(chan struct{}, 8)
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				c, err := dialRetry(func() []string { return []string{addr} }, user(self, i), phxtest.DialOptions{}, 10)
				if err != nil {
					errs <- err
					return
				}
				clients[i] = c
				if err := joinAll(c, chats(self, i, other), 2*time.Minute); err != nil {
					errs <- fmt.Errorf("%s: %w", user(self, i), err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		return clients
	}
	start := time.Now()
	// Both sides stay referenced until the end: a collected client's
	// socket is closed by its finalizer, which would untrack it.
	as := connectAll(dead.addr, "a", "b")
	bs := connectAll(live.addr, "b", "a")
	t.Cleanup(func() {
		for _, c := range append(as, bs...) {
			c.Close()
		}
	})
	t.Logf("%d chat presences on each node after %v", side*side, time.Since(start).Round(time.Millisecond))

	faultsTried.Add(1)
	killed := time.Now()
	dead.signal(t, syscall.SIGKILL)
	dead.waitExit(t, wait)
	bound := ttl + ttl/3
	var mu sync.Mutex
	var last time.Duration
	missing := 0
	var wg sync.WaitGroup
	for i, c := range bs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := map[string]string{} // topic → the dead user
			for k := range side {
				want[topic.ChatName(user("b", i), user("a", k))] = user("a", k)
			}
			deadline := time.Now().Add(bound + 60*time.Second)
			for len(want) > 0 && time.Now().Before(deadline) {
				f, err := c.ReadFrame(time.Until(deadline))
				if err != nil {
					t.Logf("%s: %v with %d leaves missing", user("b", i), err, len(want))
					break
				}
				if f.Event != "presence_diff" {
					continue
				}
				var d struct {
					Leaves map[string]json.RawMessage `json:"leaves"`
				}
				if json.Unmarshal(f.Payload, &d) == nil {
					if u, ok := want[f.Topic]; ok && d.Leaves[u] != nil {
						delete(want, f.Topic)
					}
				}
			}
			mu.Lock()
			missing += len(want)
			last = max(last, time.Since(killed))
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("kill -9 with %d presences: every leave on the other node's clients %v after the kill (bound: TTL %v + heartbeat %v = %v, plus the sweep); missing %d",
		side*side, last.Round(time.Millisecond), ttl, ttl/3, bound, missing)
	if missing != 0 {
		t.Fatalf("%d leaves never reached the other node's clients", missing)
	}
	if last > bound+5*time.Second {
		t.Errorf("last leave %v after the kill, want within %v (+5 s for a shared box)", last, bound)
	}
	// No ghost: a fresh join of one chat shows only the joiner.
	st, err := presenceState(t, live.addr, user("b", 0), topic.ChatName(user("b", 0), user("a", 0)))
	if err != nil || st[user("a", 0)] != 0 {
		t.Fatalf("presence after the sweep: %v %v", st, err)
	}
}
