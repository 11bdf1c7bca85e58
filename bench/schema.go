package bench

import _ "embed"

// JSONSchema is the JSON Schema (draft 2020-12) of what Report.WriteJSON
// writes.
//
//go:embed schema.json
var JSONSchema []byte
