package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// identity is one certificate the cluster needs: who it names and what it is for.
type identity struct {
	file   string
	cn     string
	orgs   []string
	server bool
	dns    []string
	ips    []net.IP // besides the loopback address
}

// newPKICommand writes a throw-away certificate authority and every certificate and key one test cluster
// uses: the API server's serving certificate, client certificates for the admin, the controller manager,
// the scheduler, the API server's kubelet client and each node's kubelet, each kubelet's serving
// certificate, and the service-account signing key. ECDSA P-256 keeps generation instant.
func newPKICommand() *cobra.Command {
	var dir, ip string
	var nodes []string
	cmd := &cobra.Command{
		Use:   "pki",
		Short: "write a test cluster's CA, certificates and service-account key",
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr := net.ParseIP(ip)
			if addr == nil || !addr.IsLoopback() {
				return fmt.Errorf("--ip %q is not a loopback address", ip)
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			caKey, err := newKey(filepath.Join(dir, "ca.key"))
			if err != nil {
				return err
			}
			ca, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "realk8s-ca"}, caKey)
			if err != nil {
				return err
			}
			if err := certutil.WriteCert(filepath.Join(dir, "ca.crt"), pemCert(ca)); err != nil {
				return err
			}
			ids := []identity{
				{file: "apiserver", cn: "kube-apiserver", server: true,
					dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}},
				{file: "admin", cn: "realk8s-admin", orgs: []string{"system:masters"}},
				{file: "controller-manager", cn: "system:kube-controller-manager"},
				{file: "scheduler", cn: "system:kube-scheduler"},
				{file: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}},
			}
			// A kubelet reports one of the machine's addresses as its InternalIP (it refuses a loopback
			// one) and the API server verifies the kubelet's certificate against that address, although
			// the egress proxy connects it to the loopback address.
			hostIPs, err := machineIPs()
			if err != nil {
				return err
			}
			for _, node := range nodes {
				ids = append(ids,
					identity{file: node + "-client", cn: "system:node:" + node, orgs: []string{"system:nodes"}},
					identity{file: node + "-serving", cn: node, server: true, dns: []string{node}, ips: hostIPs},
				)
			}
			for _, id := range ids {
				if err := issue(dir, id, addr, ca, caKey); err != nil {
					return fmt.Errorf("%s: %w", id.file, err)
				}
			}
			saKey, err := newKey(filepath.Join(dir, "sa.key"))
			if err != nil {
				return err
			}
			pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&dir, "dir", "", "directory to write into")
	fs.StringVar(&ip, "ip", "127.0.0.1", "the loopback address every server certificate names")
	fs.StringArrayVar(&nodes, "node", nil, "a node name (repeat for each node)")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

func newKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	data, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return nil, err
	}
	return key, keyutil.WriteKey(path, data)
}

func issue(dir string, id identity, ip net.IP, ca *x509.Certificate, caKey crypto.Signer) error {
	key, err := newKey(filepath.Join(dir, id.file+".key"))
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id.cn, Organization: id.orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if id.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = append([]net.IP{ip}, id.ips...)
		tmpl.DNSNames = id.dns
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, id.file+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
}

// machineIPs are the addresses of the machine's interfaces other than loopback ones.
func machineIPs() ([]net.IP, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("interface addresses: %w", err)
	}
	var out []net.IP
	for _, addr := range addrs {
		if ipnet, ok := addr.(*net.IPNet); ok && !ipnet.IP.IsLoopback() {
			out = append(out, ipnet.IP)
		}
	}
	return out, nil
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
