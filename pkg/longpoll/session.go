package longpoll

import (
	"errors"
	"sync"
	"time"

	"github.com/elchat/elchat/pkg/closecode"
	"github.com/elchat/elchat/pkg/hub"
)

var (
	// ErrSlowConsumer is returned by Send when the session's mailbox is
	// over its bound; the session is being closed.
	ErrSlowConsumer = errors.New("longpoll: slow consumer")
	// ErrClosed is returned by Send on a closed session.
	ErrClosed = errors.New("longpoll: session closed")
)

// session is one long-poll client: the hub.Conn the hub writes to, and the
// hub.Client the session's POSTs feed.
//
// An idle session is this struct, its hub.Client and a map entry: no
// goroutine and no timer (the Manager's reaper watches every session), and
// no mailbox storage once a poll took the messages.
type session struct {
	m       *Manager
	id      string    // immutable
	user    string    // immutable
	token   string    // immutable: the signed token naming this session
	expires time.Time // immutable: the user's token expires then
	client  *hub.Client
	release func() // per-user and per-address limits; nil: none

	// postMu is held while a POST feeds the client, and by finish around
	// Client.Closed: HandleText runs one call at a time, in order, and
	// never after Closed.
	postMu sync.Mutex

	// mu guards everything below. It is the innermost lock: the hub calls
	// Send, Close, PauseReads and ResumeReads with its own locks held.
	mu       sync.Mutex
	box      [][]byte // messages for the next poll, oldest first; shared, never modified
	boxBytes int
	// wake is closed to answer the held poll (messages, close, a newer
	// poll); nil while no poll is held.
	wake    chan struct{}
	pollGen uint64 // numbers polls; a held poll whose number is old was superseded
	held    bool   // a poll is held now
	idle    int64  // unix nanos when the last poll ended (or the session opened)
	closed  bool
	code    int // close code and reason, for the logs
	reason  string
	paused  bool          // the hub paused reads: POSTs wait
	resume  chan struct{} // closed when reads resume or the session closes
	removed bool          // gone from the Manager's table
}

var _ hub.Conn = (*session)(nil)

// Send queues msg for the next poll and wakes the held one. Over the
// mailbox bound the session is closed as a slow consumer, as a socket
// whose outbound queue overflows is.
func (s *session) Send(msg []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if len(s.box)+1 > s.m.cfg.MaxQueueFrames || s.boxBytes+len(msg) > s.m.cfg.MaxQueueBytes {
		s.m.slow.Add(1)
		s.closeLocked(closecode.Policy, "slow consumer")
		return ErrSlowConsumer
	}
	s.box = append(s.box, msg)
	s.boxBytes += len(msg)
	s.wakeLocked()
	return nil
}

// Close ends the session: what is in the mailbox still goes out, then the
// next poll gets status 410, on which phoenix.js reconnects and rejoins.
// The hub client is released on another goroutine, never inside the
// hub's call.
func (s *session) Close(code int, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked(code, reason)
}

func (s *session) closeLocked(code int, reason string) {
	if s.closed {
		return
	}
	s.closed, s.code, s.reason = true, code, reason
	s.wakeLocked()
	if s.resume != nil {
		close(s.resume)
		s.resume = nil
	}
	go s.m.finish(s)
}

// PauseReads makes POSTs wait before their next frame until ResumeReads.
func (s *session) PauseReads() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused && !s.closed {
		s.paused = true
		s.resume = make(chan struct{})
	}
}

func (s *session) ResumeReads() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused {
		s.paused = false
		if s.resume != nil {
			close(s.resume)
			s.resume = nil
		}
	}
}

func (s *session) wakeLocked() {
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
}

// takeLocked empties the mailbox.
func (s *session) takeLocked() [][]byte {
	msgs := s.box
	s.box, s.boxBytes = nil, 0
	return msgs
}

// waitResume returns nil when reads are not paused, else a channel closed
// when they resume or the session closes.
func (s *session) waitResume() (closed bool, resume <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return true, nil
	}
	if s.paused {
		return false, s.resume
	}
	return false, nil
}

func (s *session) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
