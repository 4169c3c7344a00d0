// Package closecode lists the WebSocket close codes ElChat sends, so the
// transport, the server and the hub agree on what each one means to a
// phoenix.js client. phoenix.js reconnects (with backoff) after every code
// except Normal; that is the lever these codes pull.
package closecode

const (
	// Normal (1000) ends the session for good: phoenix.js treats it as a
	// deliberate close and does not reconnect. Use it only when the client
	// should stay away (kicked, account gone).
	Normal = 1000
	// GoingAway (1001) is for idle timeouts and engine shutdown; the
	// client reconnects.
	GoingAway = 1001
	// ProtocolError (1002) answers a frame that breaks RFC 6455.
	ProtocolError = 1002
	// Unsupported (1003) answers a message type ElChat does not accept
	// (binary messages on a Phoenix JSON socket).
	Unsupported = 1003
	// InvalidData (1007) answers a text message that is not valid UTF-8,
	// or not a decodable Phoenix message.
	InvalidData = 1007
	// Policy (1008) closes a client that broke a rule: frames before the
	// handshake completed, rate abuse, forbidden actions.
	Policy = 1008
	// TooBig (1009) answers a message larger than the configured maximum.
	TooBig = 1009
	// InternalError (1011) reports a server fault the client cannot fix;
	// it reconnects and may land on a healthier node.
	InternalError = 1011
	// ServiceRestart (1012) is sent while a node drains for a restart, so
	// clients reconnect, through the load balancer, to another node.
	ServiceRestart = 1012
	// TokenExpired (4001) closes a connection whose token ran out. It is
	// not 1000, so phoenix.js reconnects and re-reads its params (or
	// authToken), picking up a fresh token from the host page.
	TokenExpired = 4001
	// Banned (4003) closes the sockets of a user the host app banned; the
	// reason ("banned" or "banned: <reason>") is for the client to show.
	// phoenix.js reconnects after it, and the handshake refuses the user
	// (HTTP 403, "banned") until the ban ends.
	Banned = 4003
)
