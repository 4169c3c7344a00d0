package sqlite

import (
	"testing"

	"github.com/elchat/elchat/pkg/store"
)

// Unread's "nothing found" must not forget a user a batch addressed
// while the query ran: only an unchanged stamp may be forgotten.
func TestRecipientsForgetOnlyUnchanged(t *testing.T) {
	r := recipients{users: map[string]uint64{}}
	if _, listed := r.lookup("b"); listed {
		t.Fatal("b listed before any message")
	}
	batch := []store.NewMessage{{OpponentID: "b"}}
	r.note(batch)
	stamp, listed := r.lookup("b")
	if !listed {
		t.Fatal("b not listed after a note")
	}
	r.note(batch) // a batch to b commits while the query runs
	r.forget("b", stamp)
	if _, listed := r.lookup("b"); !listed {
		t.Fatal("b forgotten although a batch addressed b after the lookup")
	}
	stamp, _ = r.lookup("b")
	r.forget("b", stamp)
	if _, listed := r.lookup("b"); listed {
		t.Fatal("b still listed after a quiet forget")
	}
}
