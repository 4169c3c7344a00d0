package phx

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDecodeObservedFrames(t *testing.T) {
	tests := []struct {
		in   string
		want Frame
	}{
		{`["6","6","room:lobby","phx_join",{"name":"alice"}]`,
			Frame{"6", "6", "room:lobby", "phx_join", []byte(`{"name":"alice"}`)}},
		{`["6","7","room:lobby","new_msg",{"body":"hi"}]`,
			Frame{"6", "7", "room:lobby", "new_msg", []byte(`{"body":"hi"}`)}},
		{`[null,"7","phoenix","heartbeat",{}]`,
			Frame{"", "7", "phoenix", "heartbeat", []byte(`{}`)}},
		{`["17","19","room:bad","phx_leave",{}]`,
			Frame{"17", "19", "room:bad", "phx_leave", []byte(`{}`)}},
		{`[null,null,"room:lobby","new_msg",{"body":"hi"}]`,
			Frame{"", "", "room:lobby", "new_msg", []byte(`{"body":"hi"}`)}},
		// Whitespace anywhere JSON allows it; payload excludes it.
		{" \t\r\n[ \"1\" , null ,\"t\",\"e\" , [1, 2.5e-3, true, false, null, \"x\"] ] \n",
			Frame{"1", "", "t", "e", []byte(`[1, 2.5e-3, true, false, null, "x"]`)}},
		// Phoenix tolerates extra trailing elements.
		{`["1","2","t","e",{},"extra",{"a":[1]}]`, Frame{"1", "2", "t", "e", []byte(`{}`)}},
		// Any JSON value is a payload.
		{`["1","2","t","e",-0.5E+10]`, Frame{"1", "2", "t", "e", []byte(`-0.5E+10`)}},
		{`["1","2","t","e",null]`, Frame{"1", "2", "t", "e", []byte(`null`)}},
		// Escapes, including a surrogate pair and a lone surrogate.
		{`["a\"b","\\","room:\u00e9\ud83d\ude00","ev\n\t\/",{}]`,
			Frame{`a"b`, `\`, "room:é😀", "ev\n\t/", []byte(`{}`)}},
		{`["1","2","\ud800x","\udc00",{}]`, Frame{"1", "2", "\uFFFDx", "\uFFFD", []byte(`{}`)}},
		{`["1","2","\ud800\u0041","e",{}]`, Frame{"1", "2", "\uFFFDA", "e", []byte(`{}`)}},
		// An empty join_ref is indistinguishable from null.
		{`["","","t","e",{}]`, Frame{"", "", "t", "e", []byte(`{}`)}},
	}
	for _, tt := range tests {
		got, err := Decode([]byte(tt.in))
		if err != nil {
			t.Errorf("Decode(%s): %v", tt.in, err)
			continue
		}
		if !frameEqual(got, tt.want) {
			t.Errorf("Decode(%s)\n got %+v\nwant %+v", tt.in, got, tt.want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	deep := strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)
	okDeep := strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth)
	tests := []struct {
		in     string
		reason string
	}{
		{``, ReasonNotFrame + "|" + ReasonMalformed},
		{`hello`, ReasonMalformed},
		{`{"topic":"t"}`, ReasonNotFrame},
		{`"str"`, ReasonNotFrame},
		{`[]`, ReasonNotFrame},
		{`["1","2","t","e"]`, ReasonNotFrame},
		{`["1","2","t"]`, ReasonNotFrame},
		{`["1","2","t","e"`, ReasonMalformed},
		{`["1","2","t","e",]`, ReasonMalformed},
		{`["1","2","t","e",{}`, ReasonMalformed},
		{`["1","2",3,"e",{}]`, ReasonTopic},
		{`["1","2",null,"e",{}]`, ReasonTopic},
		{`["1","2","","e",{}]`, ReasonTopic},
		{`["1","2","t",{},{}]`, ReasonEvent},
		{`["1","2","t","",{}]`, ReasonEvent},
		{`[1,"2","t","e",{}]`, ReasonJoinRef},
		{`[true,"2","t","e",{}]`, ReasonJoinRef},
		{`["1",2,"t","e",{}]`, ReasonRef},
		// A type error is not reported for input that is broken anyway.
		{`[1,"2","t","e",{]`, ReasonMalformed},
		{`["1","2","t","e",{}] x`, ReasonTrailing},
		{`["1","2","t","e",{}][]`, ReasonTrailing},
		{`["1","2","t","e",{"a":}]`, ReasonMalformed},
		{`["1","2","t","e",{"a" 1}]`, ReasonMalformed},
		{`["1","2","t","e",{1:1}]`, ReasonMalformed},
		{`["1","2","t","e",[1,]]`, ReasonMalformed},
		{`["1","2","t","e",01]`, ReasonMalformed},
		{`["1","2","t","e",1.]`, ReasonMalformed},
		{`["1","2","t","e",1e]`, ReasonMalformed},
		{`["1","2","t","e",-]`, ReasonMalformed},
		{`["1","2","t","e",tru]`, ReasonMalformed},
		{`["1","2","t","e",nulll]`, ReasonMalformed},
		{`["1","2","t","e","\x"]`, ReasonMalformed},
		{`["1","2","t\u12","e",{}]`, ReasonMalformed},
		{"[\"1\",\"2\",\"t\x01\",\"e\",{}]", ReasonMalformed},
		{`["1","2","t","e",` + deep + `]`, ReasonDepth},
		{`["1","2","t","e",{},` + deep + `]`, ReasonDepth},
		{deep, ReasonJoinRef},
		{strings.Repeat("[", 100000), ReasonMalformed},
		{`["1","2","t","e",` + strings.Repeat(`{"a":`, 100000), ReasonDepth},
		// Invalid UTF-8 is rejected, not repaired.
		{"[\"1\",\"2\",\"t\xff\",\"e\",{}]", ReasonUTF8},
		{"[\"1\",\"2\",\"t\",\"e\",{\"a\":\"\xc3\"}]", ReasonUTF8},
	}
	for _, tt := range tests {
		_, err := Decode([]byte(tt.in))
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("Decode(%.60q) = %v, want *DecodeError", tt.in, err)
			continue
		}
		if !strings.Contains("|"+tt.reason+"|", "|"+de.Reason+"|") {
			t.Errorf("Decode(%.60q) reason %q, want %q", tt.in, de.Reason, tt.reason)
		}
	}
	if _, err := Decode([]byte(`["1","2","t","e",` + okDeep + `]`)); err != nil {
		t.Errorf("nesting of exactly MaxDepth rejected: %v", err)
	}
}

func TestEncoders(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{string(AppendReply(nil, "6", "7", "room:lobby", "ok", nil)),
			`["6","7","room:lobby","phx_reply",{"status":"ok","response":{}}]`},
		{string(AppendReply(nil, "", "7", "phoenix", "ok", []byte{})),
			`[null,"7","phoenix","phx_reply",{"status":"ok","response":{}}]`},
		{string(AppendReply(nil, "6", "7", "t", "ok", []byte(`{"id":1}`))),
			`["6","7","t","phx_reply",{"status":"ok","response":{"id":1}}]`},
		{string(AppendPush(nil, "6", "room:lobby", "presence_state", []byte(`{"a":{"metas":[]}}`))),
			`["6",null,"room:lobby","presence_state",{"a":{"metas":[]}}]`},
		{string(AppendBroadcast(nil, "room:lobby", "new_msg", []byte(`{"body":"hi"}`))),
			`[null,null,"room:lobby","new_msg",{"body":"hi"}]`},
		{string(AppendMessage(nil, "6", "6", "room:lobby", EventClose, nil)),
			`["6","6","room:lobby","phx_close",{}]`},
		{string(AppendMessage(nil, "6", "6", "room:lobby", EventError, []byte(`{"reason":"channel_crash"}`))),
			`["6","6","room:lobby","phx_error",{"reason":"channel_crash"}]`},
		{string(AppendErrorReply(nil, "", "14", "unknown:x", "unmatched topic")),
			`[null,"14","unknown:x","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]`},
		{string(AppendString(nil, "a\"b\\c\n\r\t\b\f\x00\x1f\x7f<>&é😀\u2028")),
			`"a\"b\\c\n\r\t\b\f\u0000\u001f` + "\x7f<>&é😀\u2028" + `"`},
		{string(AppendString(nil, "x\xffy\xe2\x82")), `"x\ufffdy\ufffd\ufffd"`},
		{string(AppendString(nil, "")), `""`},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got  %s\nwant %s", tt.got, tt.want)
		}
		if !json.Valid([]byte(tt.got)) {
			t.Errorf("invalid JSON: %s", tt.got)
		}
	}
}

// AppendString must agree with encoding/json on what a string decodes to.
func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		s := randomString(rng)
		enc := AppendString(nil, s)
		var back string
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("AppendString(%q) = %s: %v", s, enc, err)
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		if !utf8.ValidString(s) {
			// Each invalid byte becomes its own U+FFFD, unlike ToValidUTF8.
			want = string([]rune(s))
		}
		if back != want {
			t.Fatalf("AppendString(%q) decodes to %q, want %q", s, back, want)
		}
	}
}

func TestRoundTripRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	payloads := []string{`{}`, `{"body":"hi"}`, `[1,{"a":null}]`, `"s"`, `0`, `true`}
	for range 5000 {
		in := Frame{
			JoinRef: randomString(rng),
			Ref:     randomString(rng),
			Topic:   randomString(rng) + "t",
			Event:   "e" + randomString(rng),
			Payload: []byte(payloads[rng.IntN(len(payloads))]),
		}
		in.JoinRef, in.Ref = string([]rune(in.JoinRef)), string([]rune(in.Ref))
		in.Topic, in.Event = string([]rune(in.Topic)), string([]rune(in.Event))
		enc := AppendMessage(nil, in.JoinRef, in.Ref, in.Topic, in.Event, in.Payload)
		got, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode(%s): %v", enc, err)
		}
		if !frameEqual(got, in) {
			t.Fatalf("round trip of %s\n got %+v\nwant %+v", enc, got, in)
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	buf := make([]byte, 0, 512)
	payload := []byte(`{"body":"hello there","user":"42"}`)
	n := testing.AllocsPerRun(100, func() {
		buf = AppendReply(buf[:0], "6", "7", "chat:9:10", "ok", payload)
		buf = AppendBroadcast(buf[:0], "chat:9:10", "new_msg", payload)
		buf = AppendPush(buf[:0], "6", "chat:9:10", "presence_state", payload)
		buf = AppendErrorReply(buf[:0], "", "7", "x:y", "unmatched topic")
	})
	if n != 0 {
		t.Errorf("encoders allocate %v times per run, want 0", n)
	}
	frame := []byte(`[null,"7","phoenix","heartbeat",{}]`)
	n = testing.AllocsPerRun(100, func() {
		if _, err := Decode(frame); err != nil {
			t.Fatal(err)
		}
	})
	if n > 1 {
		t.Errorf("heartbeat decode allocates %v times, want at most 1", n)
	}
}

func randomString(rng *rand.Rand) string {
	const alphabet = "ab:\"\\/\n\t\x00\x1f\x7f é😀\xff\xc3\u2028"
	n := rng.IntN(12)
	var b strings.Builder
	for range n {
		if rng.IntN(4) == 0 {
			b.WriteByte(alphabet[rng.IntN(len(alphabet))])
		} else {
			b.WriteByte(byte('a' + rng.IntN(26)))
		}
	}
	return b.String()
}

func frameEqual(a, b Frame) bool {
	return a.JoinRef == b.JoinRef && a.Ref == b.Ref && a.Topic == b.Topic &&
		a.Event == b.Event && bytes.Equal(a.Payload, b.Payload)
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`["6","6","room:lobby","phx_join",{"name":"alice"}]`,
		`[null,"7","phoenix","heartbeat",{}]`,
		`["1","2","t","e",{},"extra"]`,
		`["a\"b","\\","\ud83d\ude00","\ud800",[1,-2.5e3,true,null]]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := Decode(data)
		valid := json.Valid(data) && utf8.Valid(data)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a *DecodeError", err)
			}
			if de.Reason == ReasonMalformed && json.Valid(data) {
				t.Fatalf("valid JSON %q reported as malformed", data)
			}
			return
		}
		if !valid {
			t.Fatalf("accepted invalid input %q", data)
		}
		// Differential check against encoding/json.
		var elems []json.RawMessage
		if err := json.Unmarshal(data, &elems); err != nil || len(elems) < 5 {
			t.Fatalf("accepted %q but encoding/json says %v (%d elements)", data, err, len(elems))
		}
		for k, want := range []string{fr.JoinRef, fr.Ref, fr.Topic, fr.Event} {
			var got *string
			if err := json.Unmarshal(elems[k], &got); err != nil {
				t.Fatalf("element %d of %q: %v", k, data, err)
			}
			if (got == nil && want != "") || (got != nil && *got != want) {
				t.Fatalf("element %d of %q: decoded %q, encoding/json %v", k, data, want, got)
			}
		}
		if !bytes.Equal(elems[4], fr.Payload) {
			t.Fatalf("payload of %q: %q, encoding/json %q", data, fr.Payload, elems[4])
		}
		enc := AppendMessage(nil, fr.JoinRef, fr.Ref, fr.Topic, fr.Event, fr.Payload)
		fr2, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", enc, err)
		}
		if !frameEqual(fr, fr2) {
			t.Fatalf("round trip changed the frame:\n%+v\n%+v", fr, fr2)
		}
	})
}

var sink Frame

func BenchmarkDecodePush(b *testing.B) {
	frame := []byte(`["6","7","chat:9:10","new_msg",{"body":"hello there, how are you?","client_id":"c-123"}]`)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		f, err := Decode(frame)
		if err != nil {
			b.Fatal(err)
		}
		sink = f
	}
}

func BenchmarkDecodeHeartbeat(b *testing.B) {
	frame := []byte(`[null,"7","phoenix","heartbeat",{}]`)
	b.ReportAllocs()
	for b.Loop() {
		f, err := Decode(frame)
		if err != nil {
			b.Fatal(err)
		}
		sink = f
	}
}

func BenchmarkAppendReply(b *testing.B) {
	buf := make([]byte, 0, 256)
	resp := []byte(`{"id":"01HZX","at":1716400000}`)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendReply(buf[:0], "6", "7", "chat:9:10", "ok", resp)
	}
}

func BenchmarkAppendBroadcast(b *testing.B) {
	buf := make([]byte, 0, 256)
	payload := []byte(`{"body":"hello there, how are you?","from":"9","id":"01HZX"}`)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendBroadcast(buf[:0], "chat:9:10", "new_msg", payload)
	}
}
