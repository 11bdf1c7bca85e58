package porttest

import "time"

// timeAfter caps a poll wait at 5 ms so injected frames are noticed soon.
func timeAfter(ms int) <-chan time.Time {
	d := time.Duration(ms) * time.Millisecond
	if ms < 0 || d > 5*time.Millisecond {
		d = 5 * time.Millisecond
	}
	return time.After(d)
}
