package hub

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/elchat/elchat/pkg/store"
)

// Replies that carry stored data are bounded in bytes as well as in
// count: a reply longer than the connection's outbound queue would get
// the connection dropped as a slow consumer, and phoenix.js would rejoin
// with the same last_id and be dropped again. A cut page says has_more and
// the client pages on.

// pageEnvelope is the JSON around a page's items, counted against the bound.
const pageEnvelope = len(`{"messages":[],"has_more":false}`)

// encodePage renders {"messages":[...],"has_more":more} from msgs (oldest
// first) within limit bytes. keepNewest picks which end survives a cut: a
// history page keeps the newest messages (the client pages further back),
// a catch-up keeps the oldest (the client pages forward).
func encodePage(msgs []store.Message, more, keepNewest bool, limit int) ([]byte, error) {
	items := make([][]byte, len(msgs))
	size := pageEnvelope
	n := 0
	for k := range msgs {
		i := k
		if keepNewest {
			i = len(msgs) - 1 - k
		}
		b, err := encodeMessage(&msgs[i])
		if err != nil {
			return nil, err
		}
		if size+len(b)+1 > limit && n > 0 {
			more = true
			break
		}
		items[i] = b
		size += len(b) + 1
		n++
	}
	if keepNewest {
		items = items[len(items)-n:]
	} else {
		items = items[:n]
	}
	out := make([]byte, 0, size)
	out = append(out, `{"messages":[`...)
	for i, b := range items {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	out = append(out, `],"has_more":`...)
	if more {
		out = append(out, "true}"...)
	} else {
		out = append(out, "false}"...)
	}
	return out, nil
}

// encodeUnread renders the lobby's {"unread":[...]} within limit bytes,
// keeping the most recently active chats (the store lists them first); a
// cut list carries "has_more":true (only then, so the usual reply keeps
// its one key).
func encodeUnread(unread []store.UnreadChat, limit int) ([]byte, error) {
	if len(unread) == 0 {
		// Most lobby joins. Shared: a reply copies its response.
		return noUnread, nil
	}
	out := append(make([]byte, 0, 256), `{"unread":[`...)
	more := false
	for i := range unread {
		b, err := json.Marshal(&unread[i])
		if err != nil {
			return nil, err
		}
		if len(out)+len(b)+len(`],"has_more":true}`)+1 > limit && i > 0 {
			more = true
			break
		}
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	if more {
		return append(out, `],"has_more":true}`...), nil
	}
	return append(out, "]}"...), nil
}

// noUnread is the lobby reply of a user with nothing unread; never
// written to.
var noUnread = []byte(`{"unread":[]}`)

// storeReason is the reason a client gets for a failed store call.
func storeReason(err error) string {
	switch {
	case errors.Is(err, store.ErrClientIDReused):
		return "client_id already used for a different message"
	case errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded):
		return "store unavailable"
	case errors.Is(err, store.ErrInvalid):
		return "invalid message"
	case errors.Is(err, store.ErrRefused):
		// "refused: message not found" and the like: the reason is the rest.
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			return msg[i+2:]
		}
		return msg
	}
	return "store error"
}
