# syntax=docker/dockerfile:1
# trunkline's image: the agent and operator CLI (/usr/local/bin/trunkline)
# and the CNI plugin the install-cni init container copies to the host
# (/usr/local/bin/trunkline-cni). Build it with `make image`.

# Static binaries, built as `make build` builds them (a test in
# e2e/deploy_test.go keeps the flags the same).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o /out/ ./cmd/...

# The agent execs nothing (no ip, no ethtool: netlink and ioctls from Go),
# so a static base without a shell is enough. It runs as root with the
# capabilities deploy/daemonset.yaml adds, not as a privileged container.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/trunkline /out/trunkline-cni /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/trunkline"]
CMD ["help"]
