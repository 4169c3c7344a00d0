//go:build linux

package main

// A tiny SVG plotter: line plots (optionally log-x) and bar charts.

import (
	"fmt"
	"html"
	"math"
	"strings"
)

type series struct {
	Name string
	X, Y []float64
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

const (
	svgW, svgH             = 720, 420
	padL, padR, padT, padB = 70, 20, 40, 55
	plotW, plotH           = svgW - padL - padR, svgH - padT - padB
)

func niceTicks(lo, hi float64, n int) []float64 {
	if hi <= lo {
		hi = lo + 1
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var t []float64
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		t = append(t, v)
	}
	return t
}

func fmtTick(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case math.Abs(v) >= 1e4:
		return fmt.Sprintf("%gk", v/1e3)
	default:
		return fmt.Sprintf("%g", math.Round(v*1000)/1000)
	}
}

func svgHeader(b *strings.Builder, title, xl, yl string) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	fmt.Fprintf(b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(b, `<text x="%d" y="22" font-size="15" text-anchor="middle">%s</text>`+"\n", svgW/2, html.EscapeString(title))
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", padL+plotW/2, svgH-12, html.EscapeString(xl))
	fmt.Fprintf(b, `<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", padT+plotH/2, html.EscapeString(yl))
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", padL, padT, plotW, plotH)
}

// linePlot draws series; logX puts x on a log10 scale (all x must be > 0).
func linePlot(title, xl, yl string, ss []series, logX bool) string {
	var b strings.Builder
	svgHeader(&b, title, xl, yl)
	xmin, xmax, ymin, ymax := math.Inf(1), math.Inf(-1), 0.0, math.Inf(-1)
	tx := func(v float64) float64 {
		if logX {
			return math.Log10(math.Max(v, 1e-6))
		}
		return v
	}
	for _, s := range ss {
		for i := range s.X {
			xmin, xmax = math.Min(xmin, tx(s.X[i])), math.Max(xmax, tx(s.X[i]))
			ymin, ymax = math.Min(ymin, s.Y[i]), math.Max(ymax, s.Y[i])
		}
	}
	if math.IsInf(xmin, 0) {
		b.WriteString("</svg>\n")
		return b.String()
	}
	if xmax == xmin {
		xmax = xmin + 1
	}
	if ymax <= ymin {
		ymax = ymin + 1
	}
	ymax *= 1.05
	px := func(v float64) float64 { return padL + (tx(v)-xmin)/(xmax-xmin)*plotW }
	py := func(v float64) float64 { return padT + plotH - (v-ymin)/(ymax-ymin)*plotH }
	for _, t := range niceTicks(ymin, ymax, 6) {
		y := py(t)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", padL, padL+plotW, y, y, padL-5, y+4, fmtTick(t))
	}
	if logX {
		for e := math.Floor(xmin); e <= math.Ceil(xmax); e++ {
			if e < xmin || e > xmax {
				continue
			}
			x := padL + (e-xmin)/(xmax-xmin)*plotW
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#ddd"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, x, padT, padT+plotH, x, padT+plotH+16, fmtTick(math.Pow(10, e)))
		}
	} else {
		for _, t := range niceTicks(xmin, xmax, 8) {
			x := px(t)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#ddd"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, x, padT, padT+plotH, x, padT+plotH+16, fmtTick(t))
		}
	}
	for k, s := range ss {
		col := palette[k%len(palette)]
		var pts []string
		for i := range s.X {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.X[i]), py(s.Y[i])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="3" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", padL+10, padT+12+k*16, col, padL+26, padT+17+k*16, html.EscapeString(s.Name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func barPlot(title, yl string, labels []string, vals []float64) string {
	var b strings.Builder
	svgHeader(&b, title, "", yl)
	ymax := 0.0
	for _, v := range vals {
		ymax = math.Max(ymax, v)
	}
	if ymax <= 0 {
		ymax = 1
	}
	ymax *= 1.1
	py := func(v float64) float64 { return padT + plotH - v/ymax*plotH }
	for _, t := range niceTicks(0, ymax, 6) {
		y := py(t)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", padL, padL+plotW, y, y, padL-5, y+4, fmtTick(t))
	}
	n := len(vals)
	if n == 0 {
		b.WriteString("</svg>\n")
		return b.String()
	}
	slot := float64(plotW) / float64(n)
	for i, v := range vals {
		x := padL + slot*float64(i) + slot*0.15
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, py(v), slot*0.7, padT+plotH-py(v), palette[i%len(palette)])
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x+slot*0.35, py(v)-4, fmtTick(math.Round(v*100)/100))
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x+slot*0.35, padT+plotH+16, html.EscapeString(labels[i]))
	}
	b.WriteString("</svg>\n")
	return b.String()
}
