// Package phxtest is a small, test-only Phoenix Channels v2 client and
// node launcher for ElChat's abuse and fault suites. The client speaks the
// wire protocol with byte-level control (raw HTTP upgrade, masked or
// unmasked frames, arbitrary payloads) and is synchronous: no goroutines,
// every read has a deadline, so a test never hangs on it.
package phxtest

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// DialOptions shape the upgrade request.
type DialOptions struct {
	Token    string            // sent as ?token= unless Bearer
	Bearer   bool              // send the token as phoenix.js's authToken subprotocol
	NoToken  bool              // omit the token entirely
	Vsn      *string           // nil: "2.0.0"; pointer to "" omits vsn
	Query    string            // replaces the whole query when set
	Origin   string            // Origin header ("" : none)
	Host     string            // Host header (default: the address)
	Header   map[string]string // extra headers
	LocalIP  string            // source address, e.g. 127.0.0.7
	RcvBuf   int               // SO_RCVBUF set before connect (0: default)
	Timeout  time.Duration     // dial + handshake deadline (default 10s)
	Trailing []byte            // bytes written in the same write as the request
}

// Str returns a pointer to s (for DialOptions.Vsn).
func Str(s string) *string { return &s }

// HandshakeError is an upgrade the server answered with a non-101 status.
type HandshakeError struct {
	Status int
	Body   string
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("handshake refused: %d %s", e.Status, strings.TrimSpace(e.Body))
}

// CloseError is a close frame received from the server.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string { return fmt.Sprintf("closed by server: %d %q", e.Code, e.Reason) }

// Frame is one Phoenix message.
type Frame struct {
	JoinRef, Ref, Topic, Event string
	Payload                    json.RawMessage
}

// Reply is the payload of a phx_reply.
type Reply struct {
	Status   string          `json:"status"`
	Response json.RawMessage `json:"response"`
}

// Reason returns the error reason of an error reply.
func (r Reply) Reason() string {
	var v struct {
		Reason string `json:"reason"`
	}
	_ = json.Unmarshal(r.Response, &v)
	return v.Reason
}

// Client is one WebSocket connection.
type Client struct {
	Conn     net.Conn
	br       *bufio.Reader
	ref      int
	joinRefs map[string]string
	// Pushes holds every non-reply frame read while waiting for replies.
	Pushes []Frame
}

// Request builds the raw upgrade request for addr.
func Request(addr string, o DialOptions) string {
	q := o.Query
	if q == "" {
		v := url.Values{}
		if !o.NoToken && !o.Bearer {
			v.Set("token", o.Token)
		}
		vsn := "2.0.0"
		if o.Vsn != nil {
			vsn = *o.Vsn
		}
		enc := v.Encode()
		if vsn != "" {
			if enc != "" {
				enc += "&"
			}
			enc += "vsn=" + url.QueryEscape(vsn)
		}
		q = enc
	}
	host := o.Host
	if host == "" {
		host = addr
	}
	var b strings.Builder
	fmt.Fprintf(&b, "GET /socket/websocket?%s HTTP/1.1\r\nHost: %s\r\n", q, host)
	b.WriteString("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n")
	b.WriteString("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
	proto := "phoenix"
	if o.Bearer && !o.NoToken {
		proto += ", base64url.bearer.phx." + base64.RawURLEncoding.EncodeToString([]byte(o.Token))
	}
	fmt.Fprintf(&b, "Sec-WebSocket-Protocol: %s\r\n", proto)
	if o.Origin != "" {
		fmt.Fprintf(&b, "Origin: %s\r\n", o.Origin)
	}
	for k, v := range o.Header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	return b.String()
}

// DialTCP opens a TCP connection with the options' source address and
// receive buffer.
func DialTCP(addr string, o DialOptions) (net.Conn, error) {
	d := net.Dialer{Timeout: cmpDur(o.Timeout, 10*time.Second)}
	if o.LocalIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.LocalIP)}
	}
	if o.RcvBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.RcvBuf)
			})
			return errors.Join(err, serr)
		}
	}
	return d.Dial("tcp", addr)
}

func cmpDur(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Dial connects and upgrades. A refused upgrade returns *HandshakeError.
func Dial(addr string, o DialOptions) (*Client, error) {
	nc, err := DialTCP(addr, o)
	if err != nil {
		return nil, err
	}
	c, err := Upgrade(nc, addr, o)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// Upgrade sends the upgrade request on an open connection.
func Upgrade(nc net.Conn, addr string, o DialOptions) (*Client, error) {
	return UpgradeWith(nc, bufio.NewReader(nc), addr, o)
}

// UpgradeWith is Upgrade reading through br (for a kept-alive connection
// whose reader already exists).
func UpgradeWith(nc net.Conn, br *bufio.Reader, addr string, o DialOptions) (*Client, error) {
	_ = nc.SetDeadline(time.Now().Add(cmpDur(o.Timeout, 10*time.Second)))
	req := append([]byte(Request(addr, o)), o.Trailing...)
	if _, err := nc.Write(req); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, fmt.Errorf("upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, &HandshakeError{Status: resp.StatusCode, Body: string(body)}
	}
	_ = nc.SetDeadline(time.Time{})
	return &Client{Conn: nc, br: br, joinRefs: map[string]string{}}, nil
}

// JoinRef returns the join ref of topic's current join ("" if none).
func (c *Client) JoinRef(topic string) string { return c.joinRefs[topic] }

// Close closes the TCP connection without a close handshake.
func (c *Client) Close() error { return c.Conn.Close() }

// WriteRaw writes bytes as they are.
func (c *Client) WriteRaw(b []byte) error {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Conn.Write(b)
	return err
}

// WriteText writes one masked text frame.
func (c *Client) WriteText(p []byte) error {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return ws.WriteFrame(c.Conn, ws.MaskFrame(ws.NewTextFrame(append([]byte(nil), p...))))
}

// WriteFrame writes f as given (mask it yourself, or not).
func (c *Client) WriteFrame(f ws.Frame) error {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return ws.WriteFrame(c.Conn, f)
}

// NextRef returns a fresh ref.
func (c *Client) NextRef() string {
	c.ref++
	return strconv.Itoa(c.ref)
}

// Encode builds a Phoenix v2 frame; empty refs become null.
func Encode(joinRef, ref, topic, event string, payload any) []byte {
	null := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	var p any = payload
	if raw, ok := payload.(json.RawMessage); ok {
		p = raw
	}
	if payload == nil {
		p = map[string]any{}
	}
	b, err := json.Marshal([]any{null(joinRef), null(ref), topic, event, p})
	if err != nil {
		panic(err)
	}
	return b
}

// Push sends an event on topic (with its join ref) and returns the ref.
func (c *Client) Push(topic, event string, payload any) (string, error) {
	ref := c.NextRef()
	return ref, c.WriteText(Encode(c.joinRefs[topic], ref, topic, event, payload))
}

// ReadFrame reads the next Phoenix frame before deadline. A close frame
// returns *CloseError; ping and pong are skipped.
func (c *Client) ReadFrame(timeout time.Duration) (Frame, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := ws.ReadFrame(c.br)
		if err != nil {
			return Frame{}, err
		}
		switch f.Header.OpCode {
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(f.Payload)
			return Frame{}, &CloseError{Code: int(code), Reason: reason}
		case ws.OpPing, ws.OpPong:
			continue
		case ws.OpText:
			return DecodeFrame(f.Payload)
		default:
			return Frame{}, fmt.Errorf("unexpected opcode %v", f.Header.OpCode)
		}
	}
}

// DecodeFrame parses a server frame.
func DecodeFrame(b []byte) (Frame, error) {
	var arr []json.RawMessage
	if err := json.Unmarshal(b, &arr); err != nil || len(arr) != 5 {
		return Frame{}, fmt.Errorf("bad server frame %q: %v", b, err)
	}
	var f Frame
	str := func(r json.RawMessage, dst *string) { _ = json.Unmarshal(r, dst) }
	str(arr[0], &f.JoinRef)
	str(arr[1], &f.Ref)
	str(arr[2], &f.Topic)
	str(arr[3], &f.Event)
	f.Payload = arr[4]
	return f, nil
}

// WaitReply reads until the reply to ref arrives, keeping other frames in
// Pushes.
func (c *Client) WaitReply(ref string, timeout time.Duration) (Reply, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return Reply{}, fmt.Errorf("no reply to ref %s within %v", ref, timeout)
		}
		f, err := c.ReadFrame(left)
		if err != nil {
			return Reply{}, err
		}
		if f.Event == "phx_reply" && f.Ref == ref {
			var r Reply
			if err := json.Unmarshal(f.Payload, &r); err != nil {
				return Reply{}, err
			}
			return r, nil
		}
		c.Pushes = append(c.Pushes, f)
	}
}

// Call pushes an event and waits for its reply.
func (c *Client) Call(topic, event string, payload any, timeout time.Duration) (Reply, error) {
	ref, err := c.Push(topic, event, payload)
	if err != nil {
		return Reply{}, err
	}
	return c.WaitReply(ref, timeout)
}

// Join joins topic (payload may be nil) and waits for the reply.
func (c *Client) Join(topic string, payload any, timeout time.Duration) (Reply, error) {
	ref := c.NextRef()
	c.joinRefs[topic] = ref
	if err := c.WriteText(Encode(ref, ref, topic, "phx_join", payload)); err != nil {
		return Reply{}, err
	}
	return c.WaitReply(ref, timeout)
}

// Heartbeat sends a heartbeat and waits for its reply.
func (c *Client) Heartbeat(timeout time.Duration) error {
	ref := c.NextRef()
	if err := c.WriteText(Encode("", ref, "phoenix", "heartbeat", nil)); err != nil {
		return err
	}
	r, err := c.WaitReply(ref, timeout)
	if err == nil && r.Status != "ok" {
		err = fmt.Errorf("heartbeat: %s", r.Status)
	}
	return err
}

// Message is a stored message as the server sends it.
type Message struct {
	ID       int64  `json:"id"`
	Room     string `json:"room"`
	UserID   string `json:"user_id"`
	Body     string `json:"body"`
	ClientID string `json:"client_id"`
}

// Page is a join or history reply.
type Page struct {
	Messages []Message `json:"messages"`
	HasMore  bool      `json:"has_more"`
}

// ParsePage decodes a chat join/history response.
func ParsePage(r Reply) (Page, error) {
	var p Page
	err := json.Unmarshal(r.Response, &p)
	return p, err
}

// Send posts a chat message with a client id; it returns the stored
// message on an ok reply, or the error reason.
func (c *Client) Send(topic, body, clientID string, timeout time.Duration) (Message, string, error) {
	r, err := c.Call(topic, "new_message", map[string]string{"body": body, "client_id": clientID}, timeout)
	if err != nil {
		return Message{}, "", err
	}
	if r.Status != "ok" {
		return Message{}, r.Reason(), nil
	}
	var m Message
	err = json.Unmarshal(r.Response, &m)
	return m, "", err
}

// ReadUntil reads frames (also looking at Pushes first) until pred accepts
// one, or timeout.
func (c *Client) ReadUntil(pred func(Frame) bool, timeout time.Duration) (Frame, error) {
	for i, f := range c.Pushes {
		if pred(f) {
			c.Pushes = append(c.Pushes[:i:i], c.Pushes[i+1:]...)
			return f, nil
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return Frame{}, errors.New("timeout waiting for frame")
		}
		f, err := c.ReadFrame(left)
		if err != nil {
			return Frame{}, err
		}
		if pred(f) {
			return f, nil
		}
		c.Pushes = append(c.Pushes, f)
	}
}

// ExpectClose reads until the server's close frame (or EOF) and returns it.
// Frames before it are kept in Pushes.
func (c *Client) ExpectClose(timeout time.Duration) (*CloseError, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, errors.New("no close frame within timeout")
		}
		f, err := c.ReadFrame(left)
		var ce *CloseError
		if errors.As(err, &ce) {
			return ce, nil
		}
		if err != nil {
			return nil, err
		}
		c.Pushes = append(c.Pushes, f)
	}
}
