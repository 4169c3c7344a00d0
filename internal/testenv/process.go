//go:build linux

package testenv

import (
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// process is a server child that tests stop and start again (PostgreSQL,
// Redis): spawning, waiting until it answers, and signalling it.
type process struct {
	name string // for errors
	log  string // the server's log file, quoted when it fails to start

	mu     sync.Mutex    // guards cmd and exited
	cmd    *exec.Cmd     // nil while stopped
	exited chan struct{} // closed when cmd has exited
}

// launchLocked spawns cmd (the server dies with the test binary by
// deathSig) and polls ready every poll until it succeeds, the server
// exits, or limit passes. p.mu must be held and the server stopped.
func (p *process) launchLocked(cmd *exec.Cmd, deathSig syscall.Signal, limit, poll time.Duration, ready func() error) error {
	if err := spawn(cmd, deathSig); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	p.cmd, p.exited = cmd, exited

	deadline := time.Now().Add(limit)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			p.cmd = nil
			return fmt.Errorf("%s exited during start: %s", p.name, tail(p.log, 2000))
		case <-time.After(poll):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v\n%s", p.name, limit, err, tail(p.log, 2000))
		}
	}
}

// signal sends sig and waits for the server to exit, killing it after
// grace.
func (p *process) signal(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}
