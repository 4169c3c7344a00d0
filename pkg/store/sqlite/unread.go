package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sync"

	"github.com/elchat/elchat/pkg/store"
)

// recipients remembers who may have undelivered messages, so that a lobby
// join of a user with nothing unread (most joins: every reconnect of a
// user who has read everything) answers from memory instead of running the
// unread query, which was the largest single cost of a connect after the
// syscalls. It is exact only because this process is the file's one
// writer (see lockDir): every message that can be undelivered was saved
// through flush.
//
// A user is absent only when the database holds nothing undelivered for
// them. Entries are added for every recipient of a batch before its
// transaction starts and stamped again after it ends, and an entry is
// dropped only by Unread finding nothing for a user whose stamp did not
// change during the query. So a batch racing with that query keeps its
// recipient listed: either the stamp moved, or the stamp after the commit
// puts the user back before the batch's messages are delivered. A user
// who reads everything stays listed until their next lobby join, which
// costs that join one query, as before.
type recipients struct {
	mu    sync.Mutex
	stamp uint64            // guarded by mu; increases with every note
	users map[string]uint64 // guarded by mu; user id → stamp of the last note
}

// load lists the users with undelivered messages at open.
func (r *recipients) load(ctx context.Context, db *sql.DB) error {
	r.users = make(map[string]uint64)
	rows, err := db.QueryContext(ctx, `SELECT DISTINCT opponent_id FROM messages WHERE NOT is_delivered`)
	if err != nil {
		return fmt.Errorf("sqlite: list recipients: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return fmt.Errorf("sqlite: list recipients: %w", err)
		}
		r.users[u] = 0
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlite: list recipients: %w", err)
	}
	return nil
}

// note lists the recipient of every message in batch.
func (r *recipients) note(batch []store.NewMessage) {
	r.mu.Lock()
	r.stamp++
	for _, m := range batch {
		r.users[m.OpponentID] = r.stamp
	}
	r.mu.Unlock()
}

// lookup reports whether user may have undelivered messages, and the
// stamp to hand to forget if the query finds none.
func (r *recipients) lookup(user string) (stamp uint64, listed bool) {
	r.mu.Lock()
	stamp, listed = r.users[user]
	r.mu.Unlock()
	return stamp, listed
}

// forget drops user if no batch addressed them since lookup.
func (r *recipients) forget(user string, stamp uint64) {
	r.mu.Lock()
	if s, ok := r.users[user]; ok && s == stamp {
		delete(r.users, user)
	}
	r.mu.Unlock()
}
