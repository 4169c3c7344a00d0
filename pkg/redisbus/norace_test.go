//go:build !race

package redisbus

const raceDetector = false
