package launcher

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// resolveUser turns an image task's user ("uid", "uid:gid", "name",
// "name:group", mixed) into numeric ids, looking names up in the image's own
// /etc/passwd and /etc/group (read through an os.Root, so a symlink in the
// image cannot point the lookup outside it). A numeric uid found in
// /etc/passwd takes its primary group; one that is not gets gid = uid.
func resolveUser(rootfs, user string) (uid, gid int, err error) {
	u, g, hasG := strings.Cut(user, ":")
	var passwd, group [][]string
	load := func(name string) [][]string {
		root, err := os.OpenRoot(rootfs)
		if err != nil {
			return nil
		}
		defer root.Close()
		f, err := root.Open(name)
		if err != nil {
			return nil
		}
		defer f.Close()
		var out [][]string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
				out = append(out, strings.Split(line, ":"))
			}
		}
		return out
	}
	passwd = load("etc/passwd")
	uid, gid = -1, -1
	if n, err := strconv.Atoi(u); err == nil && n >= 0 {
		uid, gid = n, n
		for _, f := range passwd {
			if len(f) >= 4 && f[2] == u {
				if pg, err := strconv.Atoi(f[3]); err == nil {
					gid = pg
				}
				break
			}
		}
	} else {
		for _, f := range passwd {
			if len(f) >= 4 && f[0] == u {
				uid, _ = strconv.Atoi(f[2])
				gid, _ = strconv.Atoi(f[3])
				break
			}
		}
		if uid < 0 {
			return 0, 0, fmt.Errorf("%w: user %q: no such user in the image's /etc/passwd", ErrInvalid, u)
		}
	}
	if hasG {
		if n, err := strconv.Atoi(g); err == nil && n >= 0 {
			gid = n
		} else {
			group = load("etc/group")
			gid = -1
			for _, f := range group {
				if len(f) >= 3 && f[0] == g {
					gid, _ = strconv.Atoi(f[2])
					break
				}
			}
			if gid < 0 {
				return 0, 0, fmt.Errorf("%w: group %q: no such group in the image's /etc/group", ErrInvalid, g)
			}
		}
	}
	return uid, gid, nil
}
