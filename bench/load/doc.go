// Package load holds the bench's request/response and connection clients,
// which it runs from the bed's wire namespace against pods and Service
// VIPs, the same for every dataplane it compares:
//
//   - Latency: UDP round trips to an echo server, one request in flight,
//     with percentiles and the sorted samples for a CDF.
//   - ConnectRate: new TCP connections per second to an echo server, from
//     parallel workers, with failures counted by kind.
//   - Iperf: an iperf3 client and one-off server in two namespaces, its
//     JSON report parsed.
//
// Every client runs inside a given network namespace (its sockets are made
// on an OS thread that joined the namespace, and that thread is thrown away
// afterwards), is bounded in time (and count), stops by itself and honours
// its context. Summarize and Percentile describe any []time.Duration.
package load
