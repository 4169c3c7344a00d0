package hub

import (
	"strconv"

	"github.com/elchat/elchat/pkg/phx"
)

// encodeState renders a presence table in Phoenix's presence_state shape:
// {"key":{"metas":[{...},...]},...}.
func encodeState(state map[string][]Meta) []byte {
	b := make([]byte, 0, 64+96*len(state))
	b = append(b, '{')
	first := true
	for key, metas := range state {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendEntry(b, key, metas...)
	}
	return append(b, '}')
}

// encodeDiff renders a presence_diff with one meta joining or leaving.
// Both keys are always present: phoenix.js throws on a missing side.
func encodeDiff(key string, meta Meta, join bool) []byte {
	b := make([]byte, 0, 128)
	b = append(b, `{"joins":{`...)
	if join {
		b = appendEntry(b, key, meta)
	}
	b = append(b, `},"leaves":{`...)
	if !join {
		b = appendEntry(b, key, meta)
	}
	return append(b, `}}`...)
}

// EncodeLeaves renders a presence_diff in which metas left, grouped by
// key. Presence implementations that expire dead nodes' entries use it.
func EncodeLeaves(left map[string][]Meta) []byte {
	b := append(make([]byte, 0, 128), `{"joins":{},"leaves":{`...)
	first := true
	for key, metas := range left {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendEntry(b, key, metas...)
	}
	return append(b, `}}`...)
}

func appendEntry(b []byte, key string, metas ...Meta) []byte {
	b = phx.AppendString(b, key)
	b = append(b, `:{"metas":[`...)
	for i, m := range metas {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendMeta(b, m)
	}
	return append(b, `]}`...)
}

func appendMeta(b []byte, m Meta) []byte {
	b = append(b, `{"phx_ref":`...)
	b = phx.AppendString(b, m.Ref)
	b = append(b, `,"name":`...)
	b = phx.AppendString(b, m.Name)
	b = append(b, `,"online_at":`...)
	b = strconv.AppendInt(b, m.OnlineAt, 10)
	return append(b, '}')
}
