// Package swarm makes a Ballena node a peer in the fleet's mesh: it finds who
// holds an artifact and moves the bytes between nodes with BitTorrent.
//
// Identity: each node has one ed25519 key, DATA/node.key, stored as a libp2p
// marshalled private key (crypto.MarshalPrivateKey, protobuf) with mode 0600;
// its peer ID is the machine's name. A fleet may share a pre-shared key in the
// libp2p private network format ("/key/swarm/psk/1.0.0/", "/base16/", 64 hex
// digits; see GeneratePSK): nodes without it cannot complete a connection.
// Private networks cover TCP only, so a node with a PSK refuses QUIC addresses.
//
// Discovery: explicit bootstrap multiaddrs, optionally mDNS, and a kad-dht
// under the /ballena protocol prefix whose provider records are keyed by the
// CIDv1 (raw codec) of a blob's sha256 (DigestCID). A node advertises a digest
// as soon as its download has a source, and keeps it advertised while it holds
// the blob; records are renewed every 12 hours and lapse two days after a
// node stops renewing them.
//
// Releases: a publishing node announces the signed envelope and its release
// record on the gossipsub topic /ballena/releases/1 (flood publish, so an
// announcement does not wait for the mesh). Every receiver verifies the
// envelope against its own trust policy inside the topic validator, before the
// message is delivered or forwarded, and drops it if the record beside it is
// not the one signed. A node that missed an announcement asks its connected
// peers over /ballena/release/1.0.0 (LookupProtocol) and verifies the answer
// the same way.
//
// Bytes: the Engine (engine.go) runs anacrolix/torrent with its peer wire over
// libp2p streams, and optionally plain TCP plus an HTTP tracker for standard
// clients. Node ties it all together over one artifact store.
package swarm
