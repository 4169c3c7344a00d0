//go:build race

package redisbus

// raceDetector: the race detector slows the sweep of tens of thousands of
// entries several times, so timing bounds get more slack under it.
const raceDetector = true
