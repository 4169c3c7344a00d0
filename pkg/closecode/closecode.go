// Package closecode holds every WebSocket close code ElChat sends.
package closecode

const (
	Normal         = 1000 // tells phoenix.js to stay away
	GoingAway      = 1001
	Unsupported    = 1003
	InvalidData    = 1007
	Policy         = 1008
	TooBig         = 1009
	ServiceRestart = 1012
	TokenExpired   = 4001
)
