//go:build linux

package main

import (
	"math/bits"
	"sort"
)

// hist is a log-linear latency histogram in microseconds: exact below 32 µs,
// then 16 buckets per power of two (≤ 6.25 % relative error). It is a fixed
// array so that workers can ship it to the coordinator and merge cheaply.
const histBuckets = 32 + 40*16

type hist struct {
	C [histBuckets]uint64
	N uint64
}

func histIndex(us uint64) int {
	if us < 32 {
		return int(us)
	}
	e := bits.Len64(us) - 1 // ≥ 5
	i := 32 + (e-5)*16 + int((us>>(e-4))&15)
	if i >= histBuckets {
		i = histBuckets - 1
	}
	return i
}

// histValue is the middle of bucket i, in µs.
func histValue(i int) float64 {
	if i < 32 {
		return float64(i)
	}
	e := (i-32)/16 + 5
	m := (i - 32) % 16
	lo := (uint64(16+m) << (e - 4))
	w := uint64(1) << (e - 4)
	return float64(lo) + float64(w)/2
}

func (h *hist) add(ns int64) {
	if ns < 0 {
		ns = 0
	}
	h.C[histIndex(uint64(ns/1000))]++
	h.N++
}

func (h *hist) merge(o *hist) {
	for i, c := range o.C {
		h.C[i] += c
	}
	h.N += o.N
}

// q returns quantile p (0..1) in milliseconds.
func (h *hist) q(p float64) float64 {
	if h.N == 0 {
		return 0
	}
	want := uint64(p*float64(h.N) + 0.5)
	if want < 1 {
		want = 1
	}
	var acc uint64
	for i, c := range h.C {
		acc += c
		if acc >= want {
			return histValue(i) / 1000
		}
	}
	return histValue(histBuckets-1) / 1000
}

// sparse is the wire form: [index, count] pairs.
func (h *hist) sparse() [][2]uint64 {
	var out [][2]uint64
	for i, c := range h.C {
		if c != 0 {
			out = append(out, [2]uint64{uint64(i), c})
		}
	}
	return out
}

func histFromSparse(s [][2]uint64) *hist {
	h := &hist{}
	for _, p := range s {
		if int(p[0]) < histBuckets {
			h.C[p[0]] += p[1]
			h.N += p[1]
		}
	}
	return h
}

// cdf returns (ms, fraction) points for plotting.
func (h *hist) cdf() (xs, ys []float64) {
	if h.N == 0 {
		return nil, nil
	}
	var acc uint64
	for i, c := range h.C {
		if c == 0 {
			continue
		}
		acc += c
		xs = append(xs, histValue(i)/1000)
		ys = append(ys, float64(acc)/float64(h.N))
	}
	return
}

type latSummary struct {
	N     uint64  `json:"n"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
	Count uint64  `json:"-"`
}

func (h *hist) summary() latSummary {
	s := latSummary{N: h.N, P50: h.q(0.5), P90: h.q(0.9), P99: h.q(0.99), P999: h.q(0.999)}
	for i := histBuckets - 1; i >= 0; i-- {
		if h.C[i] != 0 {
			s.Max = histValue(i) / 1000
			break
		}
	}
	return s
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
