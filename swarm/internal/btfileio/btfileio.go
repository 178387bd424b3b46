// Package btfileio makes anacrolix/torrent's file storage read and write with
// pread and pwrite instead of mmap: page faults on a fresh mmap cost a leecher
// about 15% more CPU per GiB here. anacrolix reads the choice from its
// environment in an init function, so this package sets it in its own init.
// Go initializes ready packages in import-path order, and this package needs
// only os, so it runs before github.com/anacrolix/torrent/storage. An explicit
// TORRENT_STORAGE_DEFAULT_FILE_IO in the environment wins.
package btfileio

import "os"

const env = "TORRENT_STORAGE_DEFAULT_FILE_IO"

func init() {
	if _, ok := os.LookupEnv(env); !ok {
		os.Setenv(env, "classic")
	}
}
