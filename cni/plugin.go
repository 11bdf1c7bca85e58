package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// commandTimeout bounds one plugin command, agent calls and netlink work
// together.
const commandTimeout = 30 * time.Second

// Add is the plugin's ADD: it gets the pod interface's attachment from the
// agent, wires the pod (see [SetupPod]), tells the agent the host veth and
// prints the result in the configuration's cniVersion. A failure after the
// agent allocated undoes the wiring and releases the attachment.
func Add(args *skel.CmdArgs) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	res, err := add(ctx, args)
	if err != nil {
		return cniError(err)
	}
	return types.PrintResult(res, res.Version())
}

func add(ctx context.Context, args *skel.CmdArgs) (res types.Result, err error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	if args.Netns == "" {
		return nil, types.NewError(types.ErrInvalidNetNS, "CNI_NETNS is empty", "ADD needs the pod's network namespace")
	}
	// A chained IPAM plugin, if any, chooses the address; the agent still
	// supplies the VLAN.
	ip, err := ipamAdd(conf, args)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && ip != "" {
			err = errors.Join(err, ipamDel(conf, args))
		}
	}()
	agent := NewClient(conf.AgentSocket)
	reg, err := agent.AllocateAddress(ctx, args.ContainerID, args.IfName, args.Netns, ip)
	if err != nil {
		return nil, fmt.Errorf("allocate an attachment for %s/%s: %w", args.ContainerID, args.IfName, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, rollback(agent, args))
		}
	}()
	a, err := reg.Attachment()
	if err != nil {
		return nil, err
	}
	link, err := SetupPod(args.ContainerID, args.Netns, args.IfName, a, conf.MTU)
	if err != nil {
		return nil, err
	}
	if reg, err = agent.Attach(ctx, args.ContainerID, args.IfName, link.HostVeth); err != nil {
		return nil, fmt.Errorf("attach %s/%s on %s: %w", args.ContainerID, args.IfName, link.HostVeth, err)
	}
	if reg.State != StateAttached {
		return nil, fmt.Errorf("%w: attach %s/%s on %s: agent answered state %q, want %q", ErrAgentFailed, args.ContainerID, args.IfName, link.HostVeth, reg.State, StateAttached)
	}
	return Result(conf.CNIVersion, link, a, args.Netns, args.IfName)
}

// rollback undoes an ADD that failed after the agent allocated: the wiring
// first, so that the address is never handed out again while a route to it
// remains. It uses its own deadline: the ADD's may be what ran out.
func rollback(agent *Client, args *skel.CmdArgs) error {
	var errs []error
	if err := TeardownPod(args.Netns, args.IfName, args.ContainerID); err != nil {
		errs = append(errs, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultClientTimeout)
	defer cancel()
	if err := agent.Release(ctx, args.ContainerID, args.IfName); err != nil {
		errs = append(errs, fmt.Errorf("release %s/%s: %w", args.ContainerID, args.IfName, err))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("roll back: %w", errors.Join(errs...))
}

// Del is the plugin's DEL. It is safe to repeat and best effort: a missing
// veth or namespace, an attachment the agent does not know and an agent that
// is not running are all fine (the agent reconciles its registrations with
// the node when it starts). It fails only on an invalid configuration, a
// veth or route it could not delete, or an agent that answered with an
// error, so that the runtime tries again.
func Del(args *skel.CmdArgs) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	return cniError(del(ctx, args))
}

func del(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	var errs []error
	if err := TeardownPod(args.Netns, args.IfName, args.ContainerID); err != nil {
		errs = append(errs, err)
	}
	if err := ipamDel(conf, args); err != nil {
		errs = append(errs, err)
	}
	err = NewClient(conf.AgentSocket).Release(ctx, args.ContainerID, args.IfName)
	if err != nil && !errors.Is(err, ErrAgentUnreachable) && !errors.Is(err, ErrNotRegistered) {
		errs = append(errs, fmt.Errorf("release %s/%s: %w", args.ContainerID, args.IfName, err))
	}
	return errors.Join(errs...)
}

// Check is the plugin's CHECK: the agent has the pod interface attached on
// its host veth, and the pod is wired for its attachment (see [CheckPod]).
// Every difference is reported.
func Check(args *skel.CmdArgs) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	return cniError(check(ctx, args))
}

func check(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	reg, err := NewClient(conf.AgentSocket).Get(ctx, args.ContainerID, args.IfName)
	if err != nil {
		return fmt.Errorf("check %s/%s: %w", args.ContainerID, args.IfName, err)
	}
	a, err := reg.Attachment()
	if err != nil {
		return err
	}
	var errs []error
	want := HostVethName(args.ContainerID, args.IfName)
	if reg.State != StateAttached {
		errs = append(errs, fmt.Errorf("the agent has %s/%s in state %q, not %q: it does not forward for the pod", args.ContainerID, args.IfName, reg.State, StateAttached))
	}
	if reg.HostVeth != want {
		errs = append(errs, fmt.Errorf("the agent has %s/%s on host veth %q, want %q", args.ContainerID, args.IfName, reg.HostVeth, want))
	}
	if err := CheckPod(args.Netns, args.IfName, a); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Status is the plugin's STATUS: ready when the agent is. When it is not,
// the error has code 50 ("plugin not available"), and the runtime holds
// back ADDs.
func Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if err := NewClient(conf.AgentSocket).Ready(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "trunkline agent not available", err.Error())
	}
	return nil
}

// GC is the plugin's GC (CNI 1.1): the agent releases every attachment not
// in the configuration's "cni.dev/valid-attachments".
func GC(args *skel.CmdArgs) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	return cniError(gc(ctx, args))
}

func gc(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid, err := validAttachments(args.StdinData)
	if err != nil {
		return err
	}
	n, err := NewClient(conf.AgentSocket).GC(ctx, valid)
	if err != nil {
		return fmt.Errorf("garbage-collect attachments: %w", err)
	}
	if n > 0 {
		fmt.Fprintf(os.Stderr, "trunkline: released %d stale attachments\n", n)
	}
	return nil
}

// validAttachments reads "cni.dev/valid-attachments" from a GC
// configuration. Absent means none is valid.
func validAttachments(stdin []byte) ([]AttachmentKey, error) {
	var conf struct {
		Valid []types.GCAttachment `json:"cni.dev/valid-attachments"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode cni.dev/valid-attachments", err.Error())
	}
	keys := make([]AttachmentKey, 0, len(conf.Valid))
	for i, v := range conf.Valid {
		if v.ContainerID == "" || v.IfName == "" {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid cni.dev/valid-attachments",
				fmt.Sprintf("entry %d has an empty containerID or ifname", i))
		}
		keys = append(keys, AttachmentKey{ContainerID: v.ContainerID, Ifname: v.IfName})
	}
	return keys, nil
}

// cniError gives err the CNI error code the runtime acts on: its own if it
// is (or wraps) a *types.Error, 11 ("try again later") for an agent that is
// not there, busy or out of attachments, 999 otherwise. The message is the
// whole error, rollback failures included.
func cniError(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		if te == err {
			return te
		}
		return types.NewError(te.Code, err.Error(), "")
	}
	code := types.ErrInternal
	if errors.Is(err, ErrAgentUnreachable) || errors.Is(err, ErrAgentTimeout) || errors.Is(err, ErrPoolExhausted) {
		code = types.ErrTryAgainLater
	}
	return types.NewError(code, err.Error(), "")
}

// ipamType is the chained IPAM plugin's type, "" when there is none.
func ipamType(conf *Config) (string, error) {
	if conf.IPAM == nil {
		return "", nil
	}
	var t struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(conf.IPAM, &t); err != nil || t.Type == "" {
		return "", types.NewError(types.ErrInvalidNetworkConfig, "ipam has no type", "the ipam section must name its plugin, e.g. \"type\": \"host-local\"")
	}
	return t.Type, nil
}

// ipamAdd runs the chained IPAM plugin's ADD and returns the IPv4 address
// it chose, or "" without IPAM.
func ipamAdd(conf *Config, args *skel.CmdArgs) (string, error) {
	typ, err := ipamType(conf)
	if err != nil || typ == "" {
		return "", err
	}
	r, err := invoke.DelegateAdd(context.Background(), typ, args.StdinData, nil)
	if err != nil {
		return "", fmt.Errorf("ipam %s: %w", typ, err)
	}
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		return "", fmt.Errorf("ipam %s result: %w", typ, err)
	}
	for _, c := range res.IPs {
		if v4 := c.Address.IP.To4(); v4 != nil {
			return v4.String(), nil
		}
	}
	invoke.DelegateDel(context.Background(), typ, args.StdinData, nil)
	return "", types.NewError(types.ErrInvalidNetworkConfig, "ipam gave no IPv4 address", fmt.Sprintf("ipam %s answered %v", typ, res.IPs))
}

// ipamDel runs the chained IPAM plugin's DEL (none without IPAM).
func ipamDel(conf *Config, args *skel.CmdArgs) error {
	typ, err := ipamType(conf)
	if err != nil || typ == "" {
		return err
	}
	if err := invoke.DelegateDel(context.Background(), typ, args.StdinData, nil); err != nil {
		return fmt.Errorf("ipam %s: %w", typ, err)
	}
	return nil
}
