package chart

import (
	"fmt"
	"math"
)

// Bars is a panel of grouped bars: along the x axis one group per entry of
// Groups (frame sizes or scenarios), in each group one bar per series
// (dataplanes). The y axis includes zero.
type Bars struct {
	Title  string
	YLabel string // e.g. "Mpps"
	Groups []string
	Series []BarSeries
}

// BarSeries is one series of a Bars panel: Values[i] is its bar in
// Groups[i]. A NaN or infinite value, or one missing because Values is
// shorter than Groups, is drawn as "n/a"; values beyond Groups are ignored.
type BarSeries struct {
	Name   string
	Values []float64
}

func (p *Bars) seriesNames() []string {
	if p == nil {
		return nil
	}
	names := make([]string, len(p.Series))
	for i, s := range p.Series {
		names[i] = s.Name
	}
	return names
}

// value returns series s's value in group g, NaN if it has none.
func (p *Bars) value(s, g int) float64 {
	if vs := p.Series[s].Values; g < len(vs) && finite(vs[g]) {
		return vs[g]
	}
	return math.NaN()
}

func (p *Bars) draw(c *canvas, b box, colours map[string]string) {
	if p == nil {
		c.noData(b)
		return
	}
	lo, hi, any := 0.0, 0.0, false
	for s := range p.Series {
		for g := range p.Groups {
			if v := p.value(s, g); !math.IsNaN(v) {
				lo, hi, any = min(lo, v), max(hi, v), true
			}
		}
	}
	if !any {
		c.text(b.x+12, b.y+22, "start", `font-size="14" font-weight="bold"`, p.Title)
		c.noData(b)
		return
	}
	ticks, step := niceTicks(lo, hi, 5)
	plot, y := c.frame(b, p.Title, p.seriesNames(), swatchBox, colours, ticks, step, p.YLabel, false)

	groupW := plot.w / float64(len(p.Groups))
	barW := groupW * 0.8 / float64(len(p.Series))
	for g, group := range p.Groups {
		gx := plot.x + float64(g)*groupW
		c.text(gx+groupW/2, plot.bottom()+16, "middle", "", fitText(group, fontSize, groupW-4))
		for s, series := range p.Series {
			x := gx + groupW*0.1 + float64(s)*barW
			v := p.value(s, g)
			if math.IsNaN(v) {
				if textWidth("n/a", smallSize) <= barW+2 {
					c.text(x+barW/2, y(0)-3, "middle", `font-size="9" fill="#888888"`, "n/a")
				}
				continue
			}
			top, bottom := y(max(v, 0)), y(min(v, 0))
			c.printf(`<rect class="bar" x="%s" y="%s" width="%s" height="%s" fill="%s"><title>%s</title></rect>`+"\n",
				num(x), num(top), num(max(barW-1, 0.5)), num(bottom-top), colours[series.Name],
				esc(fmt.Sprintf("%s, %s: %s", series.Name, group, formatValue(v))))
			if v >= 0 {
				c.barLabel(x, barW, top, bottom, plot.y, formatValue(v))
			} else if textWidth(formatValue(v), smallSize) <= barW+2 {
				c.text(x+barW/2, bottom+10, "middle", `font-size="9"`, formatValue(v))
			}
		}
	}
	c.line(plot.x, y(0), plot.right(), y(0), "axis", "#444444")
	c.xLabel(b, plot, "")
}

// barLabel writes a positive bar's value: across, above the bar, if it is wide
// enough; otherwise upright above it, or inside it, whichever has room; or
// not at all.
func (c *canvas) barLabel(x, w, top, bottom, plotTop float64, label string) {
	long := textWidth(label, smallSize)
	cx := x + w/2
	switch {
	case long <= w+2:
		c.text(cx, top-3, "middle", `font-size="9"`, label)
	case w < smallSize+1:
		// too narrow even for an upright label
	case top-plotTop >= long+4:
		c.text(cx+3, top-3, "start", fmt.Sprintf(`font-size="9" transform="rotate(-90 %s %s)"`, num(cx+3), num(top-3)), label)
	case bottom-top >= long+6:
		c.text(cx+3, top+3, "end", fmt.Sprintf(`font-size="9" fill="#ffffff" transform="rotate(-90 %s %s)"`, num(cx+3), num(top+3)), label)
	}
}
