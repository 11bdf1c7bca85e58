package main

import (
	"context"
	"fmt"
	"io"
)

func cmdBench(ctx context.Context, args []string, out io.Writer) error {
	return fmt.Errorf("bench: the throughput scenario is not wired yet")
}
