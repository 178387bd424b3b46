package launcher

import (
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// verifiedAtPrefix keys, in the node's badger, when each digest first passed
// verification on this node with a key valid at the time (RFC 3339). Restarts
// of that digest are judged as of then when its key has expired since.
const verifiedAtPrefix = "launcher/verified-at/"

// firstVerified returns when digest was first verified here.
func firstVerified(db *badger.DB, digest string) (time.Time, bool, error) {
	var at time.Time
	err := db.View(func(txn *badger.Txn) error {
		it, err := txn.Get([]byte(verifiedAtPrefix + digest))
		if err != nil {
			return err
		}
		return it.Value(func(b []byte) error { return at.UnmarshalText(b) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("first verification of %s: %w", digest, err)
	}
	return at, true, nil
}

// recordVerified records at as digest's first verification, unless one is
// recorded already.
func recordVerified(db *badger.DB, digest string, at time.Time) error {
	if _, ok, err := firstVerified(db, digest); err != nil || ok {
		return err
	}
	b, err := at.UTC().MarshalText()
	if err != nil {
		return err
	}
	err = db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get([]byte(verifiedAtPrefix + digest)); err == nil {
			return nil // another verification got there first
		}
		return txn.Set([]byte(verifiedAtPrefix+digest), b)
	})
	if err != nil {
		return fmt.Errorf("record first verification of %s: %w", digest, err)
	}
	return nil
}
