package hub

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/elchat/elchat/pkg/phx"
	"github.com/elchat/elchat/pkg/store"
)

// encodeMessage renders m as its JSON object, the payload of new_message,
// message_updated and the items of history pages. It writes the fields
// itself rather than through encoding/json's reflection, which was a
// measurable part of every message's cost; the output has the same keys,
// values and order (FuzzEncodeMessage compares the two). Strings go
// through phx.AppendString, which leaves <, > and & as they are.
func encodeMessage(m *store.Message) ([]byte, error) {
	if !jsonTime(m.SentAt) || !jsonTime(m.EditedAt) {
		return json.Marshal(m) // its error names the time it cannot write
	}
	b := make([]byte, 0, 160+len(m.Body)+len(m.Room)+len(m.UserID)+len(m.OpponentID)+len(m.ClientID))
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, m.ID, 10)
	b = append(b, `,"room":`...)
	b = phx.AppendString(b, m.Room)
	b = append(b, `,"user_id":`...)
	b = phx.AppendString(b, m.UserID)
	b = append(b, `,"opponent_id":`...)
	b = phx.AppendString(b, m.OpponentID)
	b = append(b, `,"body":`...)
	b = phx.AppendString(b, m.Body)
	if m.ClientID != "" {
		b = append(b, `,"client_id":`...)
		b = phx.AppendString(b, m.ClientID)
	}
	b = append(b, `,"sent_at":"`...)
	b = m.SentAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","is_delivered":`...)
	b = strconv.AppendBool(b, m.Delivered)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, m.Seq, 10)
	if !m.EditedAt.IsZero() {
		b = append(b, `,"edited_at":"`...)
		b = m.EditedAt.AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if m.Deleted {
		b = append(b, `,"deleted":true`...)
	}
	return append(b, '}'), nil
}

// jsonTime reports whether t is a time encoding/json writes: RFC 3339
// has four-digit years and a zone offset within a day.
func jsonTime(t time.Time) bool {
	if y := t.Year(); y < 0 || y > 9999 {
		return false
	}
	_, off := t.Zone()
	return off > -24*3600 && off < 24*3600
}
