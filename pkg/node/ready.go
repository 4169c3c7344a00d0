package node

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// readyLogEvery bounds how often /readyz logs the error behind one failing
// dependency: probes come every few seconds.
const readyLogEvery = time.Minute

// Reasons /readyz answers with. They are fixed strings: the errors behind
// them (addresses, database messages) go to the log, not to whoever can
// reach the port.
const (
	reasonDraining = "draining"
	reasonStore    = "store unavailable"
	reasonRedis    = "redis unavailable"
)

// readiness serves /readyz.
type readiness struct {
	draining func() bool
	store    func(context.Context) error
	redis    func() error // nil: single node
	log      *slog.Logger
	every    time.Duration

	mu     sync.Mutex
	logged map[string]time.Time // guarded by mu: reason → last time its detail was logged
}

func (r *readiness) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if r.draining() {
		http.Error(w, reasonDraining, http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
	defer cancel()
	if err := r.store(ctx); err != nil {
		r.fail(w, reasonStore, err)
		return
	}
	if r.redis != nil {
		if err := r.redis(); err != nil {
			r.fail(w, reasonRedis, err)
			return
		}
	}
	io.WriteString(w, "ready\n") //nolint:errcheck
}

func (r *readiness) fail(w http.ResponseWriter, reason string, err error) {
	now := time.Now()
	r.mu.Lock()
	if r.logged == nil {
		r.logged = make(map[string]time.Time)
	}
	last, seen := r.logged[reason]
	log := !seen || now.Sub(last) >= r.every
	if log {
		r.logged[reason] = now
	}
	r.mu.Unlock()
	if log {
		r.log.Warn("not ready: "+reason, "err", err)
	}
	http.Error(w, reason, http.StatusServiceUnavailable)
}
