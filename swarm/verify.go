package swarm

import (
	"errors"
	"fmt"

	"github.com/anacrolix/torrent/metainfo"

	"ballena.dev/artifact"
)

func checkRelease(rel artifact.Release) error {
	if !artifact.ValidDigest(rel.Digest) {
		return fmt.Errorf("release digest %q is not a hex sha256", rel.Digest)
	}
	var ih metainfo.Hash
	if err := ih.FromHexString(rel.InfoHash); err != nil {
		return fmt.Errorf("release %s has no valid infohash %q", short(rel.Digest), rel.InfoHash)
	}
	return nil
}

// checkInfo makes sure the torrent describes exactly the signed blob: the
// infohash is signed, but the names and sizes inside are the publisher's word.
func checkInfo(info *metainfo.Info, rel artifact.Release) error {
	switch {
	case info == nil:
		return errors.New("no torrent info")
	case len(info.Files) != 0:
		return errors.New("torrent has several files; want one blob")
	case info.Name != rel.Digest:
		return fmt.Errorf("torrent names %q, want the digest %s", info.Name, rel.Digest)
	case info.Length != rel.Size:
		return fmt.Errorf("torrent is %d bytes, release says %d", info.Length, rel.Size)
	case rel.PieceLength != 0 && info.PieceLength != rel.PieceLength:
		return fmt.Errorf("torrent piece length %d, release says %d", info.PieceLength, rel.PieceLength)
	}
	return nil
}
