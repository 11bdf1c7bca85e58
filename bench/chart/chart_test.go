package chart

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var nan = math.NaN()

// fixture is a chart like a bench run's: all three panel kinds, a missing
// value, names that need escaping.
func fixture() Chart {
	dataplanes := []string{"raw", "kernel", "kernel-nft", "xdp-kernel", "trunkline shared-core", "trunkline own-core"}
	mpps := [][]float64{
		{14.88, 2.35, 0.81},
		{1.92, 1.85, 0.79},
		{1.61, 1.55, 0.78},
		{9.7, 2.34, 0.81},
		{4.1, 2.1, 0.8},
		{11.2, nan, 0.81},
	}
	bars := &Bars{Title: "Throughput, one flow", YLabel: "Mpps", Groups: []string{"64 B", "512 B", "1500 B"}}
	for i, d := range dataplanes {
		bars.Series = append(bars.Series, BarSeries{Name: d, Values: mpps[i]})
	}

	cdf := &Lines{Title: "Latency CDF, 64 B at 50% load", XLabel: "latency (µs)", YLabel: "fraction", LogX: true}
	for i, d := range dataplanes[1:] {
		var pts []Point
		base := []float64{18, 21, 6, 9, 7}[i]
		for k := 0; k <= 20; k++ {
			f := float64(k) / 20
			pts = append(pts, Point{X: base * math.Pow(1+f, 2) * (1 + 3*math.Pow(f, 8)), Y: f})
		}
		cdf.Series = append(cdf.Series, LineSeries{Name: d, Points: pts})
	}

	services := &Lines{Title: "New connections vs Services", XLabel: "Services", YLabel: "connections/s", Categorical: true, Markers: true,
		Series: []LineSeries{
			{Name: "kernel", Points: []Point{{1, 310e3}, {10e3, 280e3}, {100e3, 120e3}}},
			{Name: "kernel-nft", Points: []Point{{1, 300e3}, {10e3, 295e3}, {100e3, 290e3}}},
			{Name: "trunkline own-core", Points: []Point{{1, 1.21e6}, {10e3, 1.2e6}, {100e3, 1.18e6}}},
		}}

	memory := &Lines{Title: "Conntrack memory <entries & bytes>", XLabel: "conntrack entries", YLabel: "MiB", Markers: true,
		Series: []LineSeries{
			{Name: "trunkline own-core", Points: []Point{{0, 2}, {250e3, 30}, {500e3, 58}, {750e3, nan}, {1e6, 114}}},
			{Name: "kernel", Points: []Point{{0, 0}, {250e3, 80}, {500e3, 160}, {1e6, 320}}},
		}}

	return Chart{
		Title:  "trunkline bench — run 2024-05-01",
		Panels: []Panel{bars, cdf, services, memory, &Bars{Title: "Pods <none>"}},
		Note:   "machine: 2× Xeon E5-2680 v4, 25G ConnectX-5, Linux 6.8 & trunkline v0.1",
	}
}

func render(t *testing.T, ch Chart) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := ch.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// element is an SVG element as the tests see it.
type element struct {
	name  string
	attrs map[string]string
	text  string
	title string // of a <title> child: what a bar or line is
}

// parse decodes an SVG document, failing the test if it is not well-formed
// XML.
func parse(t *testing.T, svg []byte) []element {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	var els []element
	var open []int
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not valid XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			e := element{name: tok.Name.Local, attrs: map[string]string{}}
			for _, a := range tok.Attr {
				e.attrs[a.Name.Local] = a.Value
			}
			els = append(els, e)
			open = append(open, len(els)-1)
		case xml.EndElement:
			open = open[:len(open)-1]
		case xml.CharData:
			if len(open) > 0 {
				els[open[len(open)-1]].text += string(tok)
			}
			if len(open) > 1 && els[open[len(open)-1]].name == "title" {
				els[open[len(open)-2]].title += string(tok)
			}
		}
	}
	if len(els) == 0 || els[0].name != "svg" {
		t.Fatal("no svg root element")
	}
	return els
}

// count returns how many elements named name have class class.
func count(els []element, name, class string) int {
	n := 0
	for _, e := range els {
		if e.name == name && e.attrs["class"] == class {
			n++
		}
	}
	return n
}

func texts(els []element) []string {
	var s []string
	for _, e := range els {
		if e.name == "text" {
			s = append(s, e.text)
		}
	}
	return s
}

func TestGolden(t *testing.T) {
	got := render(t, fixture())
	path := filepath.Join("testdata", "bench.svg")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s; if the change is intended, run go test ./bench/chart/ -update and look at the picture", path)
	}
}

func TestStructure(t *testing.T) {
	ch := fixture()
	els := parse(t, render(t, ch))

	// 6 series × 3 groups, one missing.
	if n := count(els, "rect", "bar"); n != 17 {
		t.Errorf("bars: got %d, want 17", n)
	}
	// A path per series: 5 CDFs, 3 + 2 scaling curves.
	if n := count(els, "path", "line"); n != 10 {
		t.Errorf("lines: got %d, want 10", n)
	}
	// Markers on the two scaling panels: 3×3, then 4 + 4 points.
	if n := count(els, "circle", "marker"); n != 17 {
		t.Errorf("markers: got %d, want 17", n)
	}
	// The missing value leaves a gap: two subpaths.
	if !slices.ContainsFunc(els, func(e element) bool {
		return e.name == "path" && e.title == "trunkline own-core" && strings.Count(e.attrs["d"], "M") == 2
	}) {
		t.Error("no path of trunkline own-core with a gap")
	}

	// Same name, same colour, in every panel; different names differ.
	colours := map[string]map[string]bool{}
	for _, e := range els {
		name, _, _ := strings.Cut(e.title, ",")
		col := e.attrs["fill"]
		if e.name == "path" {
			col = e.attrs["stroke"]
		}
		if (e.name == "rect" && e.attrs["class"] == "bar") || e.name == "path" {
			if colours[name] == nil {
				colours[name] = map[string]bool{}
			}
			colours[name][col] = true
		}
	}
	seen := map[string]string{}
	for name, cols := range colours {
		if len(cols) != 1 {
			t.Errorf("%s has colours %v", name, cols)
		}
		for col := range cols {
			if other, ok := seen[col]; ok {
				t.Errorf("%s and %s share colour %s", name, other, col)
			}
			seen[col] = name
		}
	}

	all := texts(els)
	for _, want := range []string{
		"Conntrack memory <entries & bytes>", "Pods <none>", "no data", "n/a", "14.9", "Mpps",
		"1", "10k", "100k", "1.2M", "latency (µs)", "10", "100",
	} {
		if !slices.Contains(all, want) {
			t.Errorf("no text %q", want)
		}
	}
}

func TestDeterministic(t *testing.T) {
	a, b := render(t, fixture()), render(t, fixture())
	if !bytes.Equal(a, b) {
		t.Error("two renderings of the same chart differ")
	}
}

// TestDegenerate draws inputs with nothing or almost nothing to draw.
func TestDegenerate(t *testing.T) {
	inf := math.Inf(1)
	cases := map[string]Chart{
		"no panels":   {},
		"nil panel":   {Panels: []Panel{nil, (*Bars)(nil), (*Lines)(nil)}},
		"empty bars":  {Panels: []Panel{&Bars{}, &Bars{Groups: []string{"a"}}, &Bars{Series: []BarSeries{{Name: "x", Values: []float64{1}}}}}},
		"empty lines": {Panels: []Panel{&Lines{}, &Lines{Series: []LineSeries{{Name: "x"}}}}},
		"all NaN": {Panels: []Panel{
			&Bars{Groups: []string{"a", "b"}, Series: []BarSeries{{Name: "x", Values: []float64{nan, inf}}}},
			&Lines{Series: []LineSeries{{Name: "x", Points: []Point{{nan, 1}, {1, nan}, {inf, 2}}}}},
		}},
		"all zero": {Panels: []Panel{
			&Bars{Groups: []string{"a", "b"}, Series: []BarSeries{{Name: "x", Values: []float64{0, 0}}}},
			&Lines{Series: []LineSeries{{Name: "x", Points: []Point{{0, 0}, {0, 0}}}}},
			&Lines{LogX: true, Series: []LineSeries{{Name: "x", Points: []Point{{0, 0}, {-1, 0}}}}},
			&Lines{Categorical: true, Series: []LineSeries{{Name: "x", Points: []Point{{0, 0}}}}},
		}},
		"one point": {Panels: []Panel{
			&Lines{Series: []LineSeries{{Name: "x", Points: []Point{{5, 3}}}}},
			&Lines{LogX: true, Series: []LineSeries{{Name: "x", Points: []Point{{100, 3}}}}},
			&Lines{Categorical: true, Series: []LineSeries{{Name: "x", Points: []Point{{7, -3}}}}},
			&Bars{Groups: []string{"only"}, Series: []BarSeries{{Name: "x", Values: []float64{-2}}}},
		}},
		"short values": {Panels: []Panel{&Bars{Groups: []string{"a", "b", "c"}, Series: []BarSeries{{Name: "x", Values: []float64{1}}, {Name: "y"}}}}},
		"odd text":     {Title: "a\x00b\xff<&>\"'", Panels: []Panel{&Bars{Title: "]]>", Groups: []string{"<g>"}, Series: []BarSeries{{Name: "&", Values: []float64{1}}}}}},
		"huge values":  {Panels: []Panel{&Lines{Series: []LineSeries{{Name: "x", Points: []Point{{-1e300, 1e300}, {1e300, -1e300}}}}}}},
	}
	for name, ch := range cases {
		t.Run(name, func(t *testing.T) {
			els := parse(t, render(t, ch))
			for _, e := range els {
				for k, v := range e.attrs {
					if strings.Contains(v, "NaN") || strings.Contains(v, "Inf") {
						t.Errorf("<%s %s=%q>", e.name, k, v)
					}
				}
			}
		})
	}
	els := parse(t, render(t, cases["all NaN"]))
	if n := count(els, "rect", "bar"); n != 0 {
		t.Errorf("all NaN: %d bars", n)
	}
	if n := slices.Index(texts(els), "no data"); n < 0 {
		t.Error(`all NaN: no "no data"`)
	}
}

func TestNiceTicks(t *testing.T) {
	for _, tc := range []struct {
		lo, hi float64
		want   []float64
	}{
		{0, 0.87, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
		{0, 1, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
		{0, 1.3e6, []float64{0, 2e5, 4e5, 6e5, 8e5, 1e6, 1.2e6, 1.4e6}},
		{0, 14.88, []float64{0, 2, 4, 6, 8, 10, 12, 14, 16}},
		{0, 0, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
		{-3, 7, []float64{-4, -2, 0, 2, 4, 6, 8}},
		{5, 5, []float64{2, 3, 4, 5, 6, 7, 8}},
		{nan, 1, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
	} {
		got, step := niceTicks(tc.lo, tc.hi, 5)
		if len(got) != len(tc.want) {
			t.Errorf("niceTicks(%g, %g) = %v, want %v", tc.lo, tc.hi, got, tc.want)
			continue
		}
		for i := range got {
			if math.Abs(got[i]-tc.want[i]) > step*1e-9 {
				t.Errorf("niceTicks(%g, %g) = %v, want %v", tc.lo, tc.hi, got, tc.want)
				break
			}
		}
	}
}

func TestLogTicks(t *testing.T) {
	for _, tc := range []struct {
		lo, hi float64
		want   []float64
	}{
		{1, 100000, []float64{1, 10, 100, 1e3, 1e4, 1e5}},
		{6, 90, []float64{1, 2, 5, 10, 20, 50, 100}},
		{100, 100, []float64{10, 20, 50, 100, 200, 500, 1000}},
		{1e-3, 1e9, []float64{1e-3, 1e-1, 1e1, 1e3, 1e5, 1e7, 1e9}},
		{0, 10, []float64{1, 2, 5, 10}},
	} {
		got := logTicks(tc.lo, tc.hi)
		if len(got) != len(tc.want) {
			t.Errorf("logTicks(%g, %g) = %v, want %v", tc.lo, tc.hi, got, tc.want)
			continue
		}
		for i := range got {
			if math.Abs(got[i]-tc.want[i]) > tc.want[i]*1e-9 {
				t.Errorf("logTicks(%g, %g) = %v, want %v", tc.lo, tc.hi, got, tc.want)
				break
			}
		}
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		v, step float64
		want    string
	}{
		{0, 0.2, "0"},
		{0.6000000000000001, 0.2, "0.6"},
		{1, 0.2, "1"},
		{5e5, 5e5, "500k"},
		{1.5e6, 5e5, "1.5M"},
		{1.2e6, 2e5, "1.2M"},
		{1e5, 1e5, "100k"},
		{-4, 2, "-4"},
		{1000100, 100, "1.0001M"},
		{0.05, 0.05, "0.05"},
		{2e9, 1e9, "2G"},
		{-1e-17, 0.2, "0"},
	} {
		if got := formatTick(tc.v, tc.step); got != tc.want {
			t.Errorf("formatTick(%g, %g) = %q, want %q", tc.v, tc.step, got, tc.want)
		}
	}
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{0.87, "0.87"},
		{14.88, "14.9"},
		{350e3, "350k"},
		{1.21e6, "1.21M"},
		{1.2e6, "1.2M"},
		{999.6, "1k"},
		{999.6e3, "1M"},
		{-2500, "-2.5k"},
		{1.5e-5, "1.5e-05"},
		{nan, "n/a"},
		{math.Inf(-1), "n/a"},
	} {
		if got := formatValue(tc.v); got != tc.want {
			t.Errorf("formatValue(%g) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
