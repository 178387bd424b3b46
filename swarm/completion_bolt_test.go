package swarm

import (
	"testing"

	g "github.com/anacrolix/generics"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"
)

func TestBoltCompletionGathersWrites(t *testing.T) {
	dir := t.TempDir()
	ih := metainfo.HashBytes([]byte("blob"))
	pk := func(i int) metainfo.PieceKey { return metainfo.PieceKey{InfoHash: ih, Index: i} }

	// What anacrolix's own bolt completion recorded is still read.
	old, err := storage.NewBoltPieceCompletion(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Set(pk(0), g.Some(true)); err != nil {
		t.Fatal(err)
	}
	if err := old.Set(pk(1), g.Some(false)); err != nil {
		t.Fatal(err)
	}
	old.Close()

	c, err := openBoltCompletion(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := func(c storage.PieceCompletionGetSetter, i int, w storage.Completion) {
		t.Helper()
		got, err := c.Get(pk(i))
		if err != nil {
			t.Fatal(err)
		}
		if got != w {
			t.Errorf("piece %d: %+v, want %+v", i, got, w)
		}
	}
	complete := storage.Completion{Ok: true, Complete: true}
	incomplete := storage.Completion{Ok: true, Complete: false}
	want(c, 0, complete)
	want(c, 1, incomplete)
	want(c, 2, storage.Completion{})

	// A Set is seen at once, before it reaches the file.
	for i := 2; i < 100; i++ {
		if err := c.Set(pk(i), g.Some(true)); err != nil {
			t.Fatal(err)
		}
	}
	c.Set(pk(0), g.Some(false)) // a piece that failed a re-verify
	want(c, 0, incomplete)
	want(c, 50, complete)
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	want(c, 50, complete)
	c.Set(pk(1), g.Some(true))
	// None forgets a record, pending or written: the piece is unknown again.
	c.Set(pk(98), g.None[bool]())
	want(c, 98, storage.Completion{})
	c.Set(pk(99), g.Some(true))
	c.Set(pk(99), g.None[bool]())
	want(c, 99, storage.Completion{})
	// Close writes what is still pending.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(pk(3), g.Some(false)); err == nil {
		t.Error("Set after Close succeeded")
	}

	// anacrolix's own reader sees every record: the layout is its.
	back, err := storage.NewBoltPieceCompletion(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	want(back, 0, incomplete)
	want(back, 1, complete)
	for i := 2; i < 98; i++ {
		want(back, i, complete)
	}
	want(back, 98, storage.Completion{})
	want(back, 99, storage.Completion{})
	want(back, 100, storage.Completion{})
}
