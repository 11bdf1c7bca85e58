package chart

import (
	"cmp"
	"math"
	"slices"
	"strings"
)

// Lines is a panel of lines, one per series: latency CDFs or scaling curves.
// The y axis includes zero.
type Lines struct {
	Title  string
	XLabel string
	YLabel string
	// LogX puts x on a log scale; points with x ≤ 0 are left out.
	LogX bool
	// Categorical spaces the distinct x values evenly, each labelled with
	// its value (e.g. 1, 10k, 100k Services). It overrides LogX.
	Categorical bool
	// Markers draws a dot at every point. A point without a neighbour to
	// join gets one anyway.
	Markers bool
	Series  []LineSeries
}

// LineSeries is one line of a Lines panel. Points are joined in order of X;
// a point with a NaN or infinite coordinate leaves a gap.
type LineSeries struct {
	Name   string
	Points []Point
}

// Point is one point of a LineSeries.
type Point struct{ X, Y float64 }

func (p *Lines) seriesNames() []string {
	if p == nil {
		return nil
	}
	names := make([]string, len(p.Series))
	for i, s := range p.Series {
		names[i] = s.Name
	}
	return names
}

// valid tells whether q can be drawn on this panel.
func (p *Lines) valid(q Point) bool {
	return finite(q.X) && finite(q.Y) && (q.X > 0 || !p.LogX || p.Categorical)
}

func (p *Lines) draw(c *canvas, b box, colours map[string]string) {
	if p == nil {
		c.noData(b)
		return
	}
	xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), 0.0, 0.0
	var xs []float64 // distinct x values, for Categorical
	for _, s := range p.Series {
		for _, q := range s.Points {
			if p.valid(q) {
				xlo, xhi = min(xlo, q.X), max(xhi, q.X)
				ylo, yhi = min(ylo, q.Y), max(yhi, q.Y)
				xs = append(xs, q.X)
			}
		}
	}
	if len(xs) == 0 {
		c.text(b.x+12, b.y+22, "start", `font-size="14" font-weight="bold"`, p.Title)
		c.noData(b)
		return
	}
	swatch := swatchLine
	if p.Markers {
		swatch = swatchLineMarker
	}
	yTicks, yStep := niceTicks(ylo, yhi, 5)
	plot, y := c.frame(b, p.Title, p.seriesNames(), swatch, colours, yTicks, yStep, p.YLabel, p.XLabel != "")

	// x maps a value to its position; ticks are the labelled values.
	var x func(float64) float64
	type tick struct {
		v     float64
		label string
	}
	var ticks []tick
	switch {
	case p.Categorical:
		slices.Sort(xs)
		xs = slices.Compact(xs)
		slot := plot.w / float64(len(xs))
		x = func(v float64) float64 {
			i, _ := slices.BinarySearch(xs, v)
			return plot.x + (float64(i)+0.5)*slot
		}
		every := 1
		for _, v := range xs {
			every = max(every, int(math.Ceil((textWidth(formatValue(v), fontSize)+8)/slot)))
		}
		for i := 0; i < len(xs); i += every {
			ticks = append(ticks, tick{xs[i], formatValue(xs[i])})
		}
	case p.LogX:
		lt := logTicks(xlo, xhi)
		lo, hi := math.Log10(lt[0]), math.Log10(lt[len(lt)-1])
		x = func(v float64) float64 { return plot.x + (math.Log10(v)-lo)/(hi-lo)*plot.w }
		for _, t := range lt {
			label := formatTick(t, t)
			if m := t / math.Pow(10, math.Floor(math.Log10(t)+1e-9)); len(lt) > 12 && math.Round(m) != 1 {
				label = "" // many decades: label the powers of ten only
			}
			ticks = append(ticks, tick{t, label})
		}
	default:
		lt, step := niceTicks(xlo, xhi, 6)
		lo, hi := lt[0], lt[len(lt)-1]
		x = func(v float64) float64 { return plot.x + (v-lo)/(hi-lo)*plot.w }
		for _, t := range lt {
			ticks = append(ticks, tick{t, formatTick(t, step)})
		}
	}
	for _, t := range ticks {
		tx := x(t.v)
		if !p.Categorical {
			c.line(tx, plot.y, tx, plot.bottom(), "grid", "#e8e8e8")
		}
		c.line(tx, plot.bottom(), tx, plot.bottom()+4, "tick", "#444444")
		c.text(tx, plot.bottom()+16, "middle", "", t.label)
	}
	c.line(plot.x, plot.bottom(), plot.right(), plot.bottom(), "axis", "#444444")
	c.xLabel(b, plot, p.XLabel)

	for _, s := range p.Series {
		pts := slices.Clone(s.Points)
		slices.SortStableFunc(pts, func(a, b Point) int { return cmp.Compare(a.X, b.X) })
		var d strings.Builder
		var dots []Point // points to mark
		joined := false  // whether the previous point is on the path
		for i, q := range pts {
			if !p.valid(q) {
				joined = false
				continue
			}
			next := i+1 < len(pts) && p.valid(pts[i+1])
			if joined {
				d.WriteString(" L")
			} else {
				if d.Len() > 0 {
					d.WriteString(" ")
				}
				d.WriteString("M")
			}
			d.WriteString(num(x(q.X)) + " " + num(y(q.Y)))
			if p.Markers || (!joined && !next) {
				dots = append(dots, q)
			}
			joined = true
		}
		if d.Len() == 0 {
			continue
		}
		col := colours[s.Name]
		c.printf(`<path class="line" d="%s" fill="none" stroke="%s" stroke-width="2" stroke-linejoin="round"><title>%s</title></path>`+"\n",
			d.String(), col, esc(s.Name))
		for _, q := range dots {
			c.printf(`<circle class="marker" cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", num(x(q.X)), num(y(q.Y)), col)
		}
	}
}
