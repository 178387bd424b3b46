package signing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

const maxJSONDepth = 64

// checkJSONKeys rejects JSON objects with duplicate keys, including keys that
// differ only in case. encoding/json keeps the last of duplicates and matches
// field names case-insensitively, while other parsers may keep the first or
// match exactly; a signed statement must mean the same thing to all of them.
func checkJSONKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := walkJSON(dec, 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

func walkJSON(dec *json.Decoder, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("JSON nested deeper than %d levels", maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return jsonSyntax(err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := make(map[string]string)
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return jsonSyntax(err)
			}
			key, _ := kt.(string)
			fold := strings.ToLower(strings.ToUpper(key))
			if prev, dup := seen[fold]; dup {
				if prev == key {
					return fmt.Errorf("duplicate JSON key %q", key)
				}
				return fmt.Errorf("JSON keys %q and %q differ only in case", prev, key)
			}
			seen[fold] = key
			if err := walkJSON(dec, depth+1); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := walkJSON(dec, depth+1); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return jsonSyntax(err)
	}
	return nil
}

func jsonSyntax(err error) error {
	if err == io.EOF {
		return errors.New("unexpected end of JSON input")
	}
	return err
}
