// Package cellca is the certificate authority of a placement cell: it creates the
// cell directory (CA certificate and key, admin and join tokens), issues server
// certificates, and builds the TLS configurations of the API (TLS 1.3, server
// verified against the CA) and of Raft between servers (mutual TLS, peers must
// hold a server certificate from the same CA).
package cellca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Files of a cell directory and of a server's TLS directory.
const (
	CAFile         = "ca.pem"
	CAKeyFile      = "ca.key"
	AdminTokenFile = "admin.token"
	JoinTokenFile  = "join.token"
	CertFile       = "cert.pem"
	KeyFile        = "key.pem"
)

// ServerOU marks a certificate the cell CA issued to a placement server: Raft
// accepts only peers whose certificate carries it.
const ServerOU = "ballena-server"

const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 3 * 365 * 24 * time.Hour
)

// CA is a loaded cell CA.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

// Init creates a cell directory: ca.pem, ca.key, admin.token and join.token (secrets
// 0600). It refuses to overwrite an existing CA.
func Init(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cell dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CAFile)); err == nil {
		return fmt.Errorf("cell dir %s already holds a CA (%s); refusing to replace it", dir, CAFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("cell CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "ballena cell CA", Organization: []string{"ballena"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("cell CA certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, CAKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, CAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	for _, name := range []string{AdminTokenFile, JoinTokenFile} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			continue
		}
		var raw [32]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return err
		}
		if err := writeFile(p, []byte(hex.EncodeToString(raw[:])+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Load reads the CA (certificate and key) of a cell directory.
func Load(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("cell CA: %w (create one with ballena cell init)", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("cell CA %s: %w", filepath.Join(dir, CAFile), err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("cell CA key: %w", err)
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, fmt.Errorf("cell CA key %s: no PEM block", filepath.Join(dir, CAKeyFile))
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("cell CA key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("cell CA key: not an ECDSA key")
	}
	return &CA{Cert: cert, Key: key, PEM: certPEM}, nil
}

func parseCert(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// IssueServer writes cert.pem, key.pem (0600) and a copy of ca.pem into outDir: a
// certificate for server name, valid for hosts (IP addresses or DNS names; the
// loopback names are always added), usable for the API and for Raft.
func (ca *CA) IssueServer(name string, hosts []string, outDir string) error {
	if name == "" || strings.ContainsAny(name, " /\t\n") {
		return fmt.Errorf("server name %q: want a short name without spaces or slashes", name)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{ServerOU}, Organization: []string{"ballena"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(serverValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost", name},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return fmt.Errorf("tls dir: %w", err)
	}
	if err := writeFile(filepath.Join(outDir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(outDir, CertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return writeFile(filepath.Join(outDir, CAFile), ca.PEM, 0o644)
}

// Identity is a server's TLS identity: its certificate and key, its name (the
// certificate's common name) and the cell CA.
type Identity struct {
	Name string
	Cert tls.Certificate
	Pool *x509.CertPool
}

// LoadIdentity reads cert.pem and key.pem from tlsDir; the CA comes from caPath, or
// from tlsDir/ca.pem when caPath is empty. The certificate must be a server
// certificate of that CA.
func LoadIdentity(tlsDir, caPath string) (*Identity, error) {
	if caPath == "" {
		caPath = filepath.Join(tlsDir, CAFile)
	}
	pool, err := LoadPool(caPath)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, CertFile), filepath.Join(tlsDir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("server certificate in %s: %w", tlsDir, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("server certificate in %s: %w", tlsDir, err)
	}
	if err := verifyServer(leaf, pool); err != nil {
		return nil, fmt.Errorf("server certificate in %s: %w", tlsDir, err)
	}
	cert.Leaf = leaf
	return &Identity{Name: leaf.Subject.CommonName, Cert: cert, Pool: pool}, nil
}

// LoadPool reads a CA certificate file into a pool.
func LoadPool(caPath string) (*x509.CertPool, error) {
	data, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("cell CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("cell CA %s: no PEM certificate", caPath)
	}
	return pool, nil
}

func verifyServer(leaf *x509.Certificate, pool *x509.CertPool) error {
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("not issued by the cell CA: %w", err)
	}
	if !slices.Contains(leaf.Subject.OrganizationalUnit, ServerOU) {
		return fmt.Errorf("certificate of %q is not a server certificate of the cell", leaf.Subject.CommonName)
	}
	return nil
}

// APIConfig is the HTTPS server configuration: TLS 1.3 with the server's certificate.
func (id *Identity) APIConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{id.Cert}}
}

// RaftConfig is the mutual TLS configuration of Raft, both for accepting and for
// dialing: the peer must present a server certificate of the cell CA.
func (id *Identity) RaftConfig() *tls.Config {
	check := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("raft peer sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.Pool, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
			return fmt.Errorf("raft peer %q: not issued by the cell CA: %w", leaf.Subject.CommonName, err)
		}
		if !slices.Contains(leaf.Subject.OrganizationalUnit, ServerOU) {
			return fmt.Errorf("raft peer %q: not a server certificate", leaf.Subject.CommonName)
		}
		return nil
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		ClientAuth:   tls.RequireAnyClientCert,
		// Peers are named by their certificates, not by the address dialed: the chain
		// and the server mark are checked in VerifyConnection, on both sides.
		InsecureSkipVerify: true,
		VerifyConnection:   check,
	}
}

// ClientConfig is what nodes and the CLI use: TLS 1.3, the server verified against
// the cell CA in pool.
func ClientConfig(pool *x509.CertPool) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
}

// EnsureLocal prepares a self-contained cell of one in dir, as a server without
// cell flags and `ballena dev` use: the CA and tokens (cell init) if ca.pem is
// missing, and a server certificate for name and hosts in dir/tls if missing.
// It returns the TLS directory.
func EnsureLocal(dir, name string, hosts []string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, CAFile)); errors.Is(err, fs.ErrNotExist) {
		if err := Init(dir); err != nil {
			return "", err
		}
	}
	tlsDir := filepath.Join(dir, "tls")
	if _, err := os.Stat(filepath.Join(tlsDir, CertFile)); err == nil {
		if id, err := LoadIdentity(tlsDir, filepath.Join(dir, CAFile)); err == nil && coversHosts(id.Cert.Leaf, hosts) {
			return tlsDir, nil
		}
	}
	ca, err := Load(dir)
	if err != nil {
		return "", err
	}
	if err := ca.IssueServer(name, hosts, tlsDir); err != nil {
		return "", err
	}
	return tlsDir, nil
}

func coversHosts(leaf *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if h == "" || h == "0.0.0.0" || h == "::" {
			continue
		}
		if leaf.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}
