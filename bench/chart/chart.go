// Package chart draws the bench's results as one self-contained SVG image:
// grouped bars (throughput per dataplane and frame size) and lines (latency
// CDFs, scaling curves), laid out in two columns. It uses the standard
// library only, embeds no fonts or scripts, and writes the same bytes for the
// same input.
package chart

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"
)

// Chart is one SVG image: a title, panels in a grid of two columns, and a
// note under them (for example the machine and date of the run).
type Chart struct {
	Title  string
	Panels []Panel
	Note   string
}

// Panel is one plot of a Chart. *Bars and *Lines implement it.
type Panel interface {
	// seriesNames lists the panel's series in legend order.
	seriesNames() []string
	// draw draws the panel into b with the chart's colours.
	draw(c *canvas, b box, colours map[string]string)
}

// Geometry of the image, in pixels.
const (
	width      = 1200
	columns    = 2
	panelH     = 380
	gap        = 10 // around and between panels
	titleH     = 40
	noteH      = 24
	fontSize   = 11
	smallSize  = 9
	legendRowH = 16
)

// palette is the series colours (Tableau 10), given out in order of first
// appearance; with more series than colours they repeat.
var palette = [...]string{
	"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
	"#b07aa1", "#9c755f", "#ff9da7", "#d4a400", "#7f7f7f",
}

// WriteSVG writes the chart to w as one SVG document. A panel without data
// says "no data"; NaN values and empty series are drawn as missing.
func (ch Chart) WriteSVG(w io.Writer) error {
	colours := map[string]string{}
	for _, p := range ch.Panels {
		if p == nil {
			continue
		}
		for _, name := range p.seriesNames() {
			if _, ok := colours[name]; !ok {
				colours[name] = palette[len(colours)%len(palette)]
			}
		}
	}

	top := float64(gap)
	if ch.Title != "" {
		top = titleH
	}
	rows := (max(len(ch.Panels), 1) + columns - 1) / columns
	height := top + float64(rows)*(panelH+gap)
	if ch.Note != "" {
		height += noteH
	}

	c := &canvas{}
	c.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%s" viewBox="0 0 %d %s" font-family="sans-serif" font-size="%d">`+"\n",
		width, num(height), width, num(height), fontSize)
	if ch.Title != "" {
		c.printf("<title>%s</title>\n", esc(ch.Title))
	}
	c.printf(`<rect class="background" width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	if ch.Title != "" {
		c.text(gap+2, 27, "start", `font-size="18" font-weight="bold"`, ch.Title)
	}
	colW := float64(width-gap) / columns
	for i, p := range ch.Panels {
		b := box{
			x: gap + float64(i%columns)*colW,
			y: top + float64(i/columns)*(panelH+gap),
			w: colW - gap,
			h: panelH,
		}
		c.printf(`<rect class="frame" x="%s" y="%s" width="%s" height="%s" fill="none" stroke="#dddddd"/>`+"\n",
			num(b.x), num(b.y), num(b.w), num(b.h))
		if p == nil {
			c.noData(b)
			continue
		}
		p.draw(c, b, colours)
	}
	if len(ch.Panels) == 0 {
		c.text(width/2, top+panelH/2, "middle", `fill="#888888"`, "no data")
	}
	if ch.Note != "" {
		c.text(gap+2, height-8, "start", `fill="#666666"`, ch.Note)
	}
	c.printf("</svg>\n")
	_, err := w.Write(c.b.Bytes())
	return err
}

// box is a rectangle on the image.
type box struct{ x, y, w, h float64 }

func (b box) right() float64  { return b.x + b.w }
func (b box) bottom() float64 { return b.y + b.h }

// canvas collects the SVG elements of a chart.
type canvas struct{ b bytes.Buffer }

func (c *canvas) printf(format string, args ...any) { fmt.Fprintf(&c.b, format, args...) }

// text writes s at (x, y) with the anchor ("start", "middle", "end") and any
// further attributes.
func (c *canvas) text(x, y float64, anchor, attrs, s string) {
	if attrs != "" {
		attrs = " " + attrs
	}
	c.printf(`<text x="%s" y="%s" text-anchor="%s"%s>%s</text>`+"\n", num(x), num(y), anchor, attrs, esc(s))
}

func (c *canvas) line(x1, y1, x2, y2 float64, class, stroke string) {
	c.printf(`<line class="%s" x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s"/>`+"\n",
		class, num(x1), num(y1), num(x2), num(y2), stroke)
}

// noData writes "no data" in the middle of b.
func (c *canvas) noData(b box) {
	c.text(b.x+b.w/2, b.y+b.h/2, "middle", `fill="#888888"`, "no data")
}

// legendSwatch tells how a legend shows a series: a square (bars) or a line,
// with or without a marker.
type legendSwatch int

const (
	swatchBox legendSwatch = iota
	swatchLine
	swatchLineMarker
)

// frame draws a panel's title and legend, its y axis with grid lines and
// labels (ticks of the given step), and its y label, and returns the plot
// area left for the x axis and the marks, and the y of each value. xLabel
// tells whether room is needed for an x axis label under the tick labels.
func (c *canvas) frame(b box, title string, names []string, swatch legendSwatch, colours map[string]string,
	yTicks []float64, yStep float64, yLabel string, xLabel bool) (plot box, y func(float64) float64) {
	c.text(b.x+12, b.y+22, "start", `font-size="14" font-weight="bold"`, title)

	// Legend: rows of swatch and name under the title, wrapped to the width.
	lx, ly := b.x+12, b.y+40
	for _, name := range names {
		w := 23 + textWidth(name, fontSize)
		if lx+w > b.right()-12 && lx > b.x+12 {
			lx, ly = b.x+12, ly+legendRowH
		}
		col := colours[name]
		switch swatch {
		case swatchBox:
			c.printf(`<rect class="swatch" x="%s" y="%s" width="12" height="12" fill="%s"/>`+"\n", num(lx+3), num(ly-10), col)
		default:
			c.printf(`<line class="swatch" x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="2"/>`+"\n",
				num(lx), num(ly-4), num(lx+18), num(ly-4), col)
			if swatch == swatchLineMarker {
				c.printf(`<circle class="swatch" cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", num(lx+9), num(ly-4), col)
			}
		}
		c.text(lx+23, ly, "start", "", name)
		lx += w + 14
	}

	labels := make([]string, len(yTicks))
	labelW := 0.0
	for i, t := range yTicks {
		labels[i] = formatTick(t, yStep)
		labelW = max(labelW, textWidth(labels[i], fontSize))
	}
	plot.x = b.x + 12 + labelW + 6
	if yLabel != "" {
		plot.x += 18
	}
	plot.y = ly + 16
	plot.w = b.right() - 24 - plot.x
	plot.h = b.bottom() - 28 - plot.y
	if xLabel {
		plot.h -= 16
	}

	lo, hi := yTicks[0], yTicks[len(yTicks)-1]
	y = func(v float64) float64 { return plot.bottom() - (v-lo)/(hi-lo)*plot.h }
	for i, t := range yTicks {
		c.line(plot.x, y(t), plot.right(), y(t), "grid", "#e8e8e8")
		c.text(plot.x-6, y(t)+4, "end", "", labels[i])
	}
	c.line(plot.x, plot.y, plot.x, plot.bottom(), "axis", "#444444")
	if yLabel != "" {
		my := plot.y + plot.h/2
		c.text(b.x+24, my, "middle", fmt.Sprintf(`transform="rotate(-90 %s %s)"`, num(b.x+24), num(my)), yLabel)
	}
	return plot, y
}

// xLabel writes the x axis label of b under plot.
func (c *canvas) xLabel(b, plot box, label string) {
	if label != "" {
		c.text(plot.x+plot.w/2, b.bottom()-12, "middle", "", label)
	}
}

// textWidth estimates how wide s is in a sans-serif font of the given size;
// generously, so that what it says fits does.
func textWidth(s string, size float64) float64 {
	return float64(utf8.RuneCountInString(s)) * size * 0.62
}

// fitText shortens s with an ellipsis to fit w pixels.
func fitText(s string, size, w float64) string {
	if textWidth(s, size) <= w {
		return s
	}
	r := []rune(s)
	n := int(w/(size*0.62)) - 1
	if n <= 0 {
		return ""
	}
	return string(r[:min(n, len(r))]) + "…"
}

// num formats a coordinate with one decimal.
func num(v float64) string {
	if !finite(v) {
		v = 0
	}
	return trimDecimal(math.Round(v*10)/10, 1)
}

// esc escapes s for XML text or attributes; invalid characters become U+FFFD.
func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}
