package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
)

// createTimeout bounds the blocking gRPC dial of every tunnel creation, like
// kube-apiserver's egress selector bounds it (it uses 30 s).
const createTimeout = 10 * time.Second

// frontend describes how to reach the proxy-server's gRPC frontend and builds
// the same grpc.DialOptions kube-apiserver uses for it.
type frontend struct {
	network string // "unix" or "tcp"
	addr    string // socket path or host:port
	target  string // the address handed to the konnectivity-client
	opts    []grpc.DialOption
}

func (f *frontend) String() string { return f.network + ":" + f.addr }

func newUDSFrontend(path string) *frontend {
	// kube-apiserver (egressselector, UDS mode) passes the socket path as the
	// gRPC target and dials the socket itself from a context dialer.
	dialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	})
	return &frontend{
		network: "unix",
		addr:    path,
		target:  path,
		opts: []grpc.DialOption{
			dialer,
			grpc.WithBlock(),
			grpc.WithReturnConnectionError(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		},
	}
}

func newTLSFrontend(hostport, caFile, certFile, keyFile, serverName string) (*frontend, error) {
	if caFile == "" || certFile == "" || keyFile == "" {
		return nil, errors.New("-tcp requires -ca, -cert and -key")
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("-tcp %q: %w", hostport, err)
	}
	if serverName == "" {
		serverName = host
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading client cert/key: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no PEM certificates in %s", caFile)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS12,
	})
	return &frontend{
		network: "tcp",
		addr:    hostport,
		target:  hostport,
		opts: []grpc.DialOption{
			grpc.WithBlock(),
			grpc.WithReturnConnectionError(),
			grpc.WithTransportCredentials(creds),
		},
	}, nil
}

// probe makes one plain socket connection to the frontend (no gRPC), so an
// absent server is reported in milliseconds instead of after a blocking
// gRPC dial timeout per scenario.
func (f *frontend) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, f.network, f.addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// singleUse creates a single-use tunnel the way kube-apiserver's legacy path
// does: createCtx bounds the (blocking) gRPC dial, tunnelCtx bounds the
// tunnel's whole life.
func (f *frontend) singleUse(tunnelCtx context.Context) (client.Tunnel, error) {
	createCtx, cancel := context.WithTimeout(tunnelCtx, createTimeout)
	defer cancel()
	t, err := client.CreateSingleUseGrpcTunnelWithContext(createCtx, tunnelCtx, f.target, f.opts...)
	if err != nil {
		return nil, fmt.Errorf("CreateSingleUseGrpcTunnelWithContext(%s, blocking dial bounded by %v): %w", f, createTimeout, err)
	}
	return t, nil
}

// reusable creates a ReusableTunnel (one gRPC connection, one Proxy stream
// per dial) the way current kube-apiservers do.
func (f *frontend) reusable(ctx context.Context) (client.ReusableTunnel, error) {
	createCtx, cancel := context.WithTimeout(ctx, createTimeout)
	defer cancel()
	t, err := client.CreateGRPCTunnel(createCtx, f.target, f.opts...)
	if err != nil {
		return nil, fmt.Errorf("CreateGRPCTunnel(%s, blocking dial bounded by %v): %w", f, createTimeout, err)
	}
	return t, nil
}
