// Package swarm makes a Ballena node a peer in the fleet's mesh: it finds who
// holds an artifact and moves the bytes between nodes with BitTorrent.
//
// Identity: each node has one ed25519 key, DATA/node.key, stored as a libp2p
// marshalled private key (crypto.MarshalPrivateKey, protobuf) with mode 0600;
// its peer ID is the machine's name. A fleet may share a pre-shared key in the
// libp2p private network format ("/key/swarm/psk/1.0.0/", "/base16/", 64 hex
// digits; see GeneratePSK): nodes without it cannot complete a connection.
// Private networks cover TCP only, so a node with a PSK refuses QUIC addresses.
// A node without a PSK listens on loopback only unless told OpenMesh; an
// allowlist (Gate, a libp2p connection gater) narrows the mesh to listed peers.
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
// message is delivered or forwarded, and rejects it if it fails or the record
// beside it is not the one signed; rejections count in gossipsub's peer score,
// which graylists and prunes a peer that keeps sending them. A node that missed an announcement asks its connected
// peers over /ballena/release/1.0.0 (LookupProtocol) and verifies the answer
// the same way.
//
// Bytes: the Engine (engine.go) runs anacrolix/torrent with its peer wire over
// libp2p streams (a download that gets no torrent info over BitTorrent's
// metadata exchange within a second also asks its peers over
// /ballena/info/1.0.0, InfoProtocol), and optionally plain TCP plus an HTTP tracker for standard
// clients. Node ties it all together over one artifact store.
//
// # Where things are
//
// The mesh:
//
//	host.go        identity, PSK, the libp2p host
//	gate.go        closed by default (CheckClosedMesh); the allowlist connection gater
//	discovery.go   kad-dht provider records and peer lookups; mDNS
//	gossip.go      the release topic and its validator
//	lookup.go      the release lookup protocol, both sides
//	holdproof.go   proving to a peer that a release is held (publish --wait-replicas)
//
// The node:
//
//	node.go        NodeConfig, NewNode, staying connected to the mesh, Drop, Close
//	releases.go    verified releases heard or looked up; Announce; answering lookups
//	autofetch.go   fetching matching announcements; catching up with newly connected peers
//	provide.go     seeding and advertising what the store holds, renewing DHT records
//	status.go      Status
//
// A fetch, stage by stage (fetch.go tells the whole story):
//
//	fetch.go       Fetch and the fetch job that runs stages 2 to 5
//	resolve.go     1 resolve the release
//	holders.go     2 find holders, feeding them to the engine as found
//	download.go    3 download: Engine.Download, the torrent, the stall timeout
//	verify.go      4 verify: the torrent against the signed release
//	adopt.go       5 adopt: the blob into the store, then the release record
//
// The engine:
//
//	engine.go      EngineConfig, NewEngine, the anacrolix client's settings, Close
//	transfers.go   the torrents it runs: Seed, Drop
//	partials.go    abandoned partial downloads: the timeout, gc
//	peers.go       peers handed to transfers, remembered and dialed again
//	stats.go       TransferStats, Pieces, rates and idle time
//	metainfo.go    torrent info: cached, computed from a stored blob, MetaInfo
//	infoproto.go   torrent info asked of fleet peers (/ballena/info/1.0.0) when BEP 9 gives none
//	blobstorage.go storage that writes a download straight into one staged blob
//	completion.go  piece completion that trusts blobs the store verified whole
//	p2pconn.go     the peer wire over libp2p streams
//	plaintcp.go    plain TCP for standard BitTorrent clients
//	tracker.go     the HTTP tracker that points standard clients at plain TCP
//	ratelimit.go   the upload cap on connections; limiter bursts
//	superseeder.go super-seeding: which piece to show which peer (policy.SuperSeed)
//	p2pconn_superseed.go  the seed's connections rewritten to show it
//	rackconn.go    rack-aware peers: a cross-rack peer shown holding only what the rack lacks
//	btwire.go      the BitTorrent wire, parsed in passing
//	third_party/go-utp  a stand-in module for anacrolix/go-utp, which anacrolix/torrent
//	               imports but the module proxy does not serve; uTP is off (go.mod replaces it)
//
// The decisions shared with the simulator (swarm/sim) live in swarm/policy.
package swarm
