package engine

import (
	"bytes"
	"cmp"
	"context"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/driver/pgdriver"
	"github.com/uptrace/bun/schema"
)

// PostgreSQL COPY support for the rebuild's bulk load.
//
// COPY … FROM STDIN streams rows in the text format (one line per row, columns separated by
// tabs, backslash escapes, \N for NULL): PostgreSQL parses it several times faster than the
// VALUES lists of a multi-row INSERT, and encoding it is far cheaper than bun's query builder.
// The columns and their order come from the bun model (the same fields bun's INSERT writes),
// and every value is rendered as bun renders it in an INSERT, minus the SQL quoting, so the two
// paths store identical rows (copy_test.go checks it with awkward values). A model field the
// encoder cannot render exactly that way is refused when the encoder is built, not guessed at.

// errCopyNul is bun's refusal too: PostgreSQL text cannot hold a NUL byte.
var errCopyNul = errors.New("string contains a NUL byte (0x00)")

// copyAppender appends one non-NULL value in COPY text form.
type copyAppender func(b []byte, v reflect.Value) ([]byte, error)

// copyField is one column of a copyEncoder.
type copyField struct {
	name   string
	index  []int
	ptr    bool // NULL when the pointer is nil
	append copyAppender
}

// copyEncoder renders values of the bun model T as COPY text rows.
type copyEncoder[T any] struct {
	columns string // "col1, col2, …", quoted as bun quotes them
	fields  []copyField
}

// newCopyEncoder builds the encoder of model T from bun's table of it: the columns bun's INSERT
// writes (the table's fields, primary keys first), in that order.
func newCopyEncoder[T any](db bun.IDB) (*copyEncoder[T], error) {
	typ := reflect.TypeFor[T]()
	table := db.Dialect().Tables().Get(typ)
	d := db.Dialect()
	enc := &copyEncoder[T]{}
	names := make([]string, 0, len(table.Fields))
	for _, f := range table.Fields {
		// What bun would write as DEFAULT, NULL-for-zero or a generated value has no plain
		// COPY equivalent; no read-model table uses those, and one that starts to must not be
		// copied differently from how it is inserted.
		if f.NullZero || f.SQLDefault != "" || f.AutoIncrement || f.Identity {
			return nil, fmt.Errorf("copy %s: column %s uses nullzero/default/autoincrement/identity, which COPY does not reproduce", typ, f.Name)
		}
		// Nor does it render what bun renders by SQL type or tag rather than by Go type
		// (JSON, arrays, ranges, hstore, msgpack).
		sqlType := strings.ToLower(cmp.Or(f.UserSQLType, f.DiscoveredSQLType))
		for _, opt := range []string{"msgpack", "array", "multirange", "composite"} {
			if f.Tag.HasOption(opt) {
				return nil, fmt.Errorf("copy %s: column %s is tagged %s, which the COPY encoder does not render", typ, f.Name, opt)
			}
		}
		if strings.HasPrefix(sqlType, "json") || strings.HasSuffix(sqlType, "[]") || strings.HasSuffix(sqlType, "range") || sqlType == "hstore" {
			return nil, fmt.Errorf("copy %s: column %s is of type %s, which the COPY encoder does not render", typ, f.Name, sqlType)
		}
		cf := copyField{name: f.Name, index: f.Index}
		ft := f.StructField.Type
		if ft.Kind() == reflect.Pointer {
			cf.ptr = true
			ft = ft.Elem()
		}
		app, err := copyAppenderFor(d, ft)
		if err != nil {
			return nil, fmt.Errorf("copy %s: column %s: %w", typ, f.Name, err)
		}
		cf.append = app
		enc.fields = append(enc.fields, cf)
		names = append(names, string(f.SQLName))
	}
	enc.columns = strings.Join(names, ", ")
	return enc, nil
}

var (
	timeType = reflect.TypeFor[time.Time]()
	uuidType = reflect.TypeFor[uuid.UUID]()
)

// copyAppenderFor picks the renderer of a Go type, matching bun's INSERT literal for it.
func copyAppenderFor(d schema.Dialect, t reflect.Type) (copyAppender, error) {
	switch t {
	case timeType:
		// bun: '2006-01-02 15:04:05.999999-07:00' in UTC (truncated to microseconds).
		return func(b []byte, v reflect.Value) ([]byte, error) {
			return appendCopyTime(b, *addrOf[time.Time](v)), nil
		}, nil
	case uuidType:
		// bun: the driver.Valuer's string, the canonical 36-character form.
		return func(b []byte, v reflect.Value) ([]byte, error) {
			return appendUUID(b, *addrOf[uuid.UUID](v)), nil
		}, nil
	}
	for _, custom := range []reflect.Type{reflect.TypeFor[driver.Valuer](), reflect.TypeFor[schema.QueryAppender]()} {
		if t.Implements(custom) || reflect.PointerTo(t).Implements(custom) {
			return nil, fmt.Errorf("type %s renders itself (%s), which the COPY encoder does not reproduce", t, custom)
		}
	}
	switch t.Kind() {
	case reflect.String:
		return func(b []byte, v reflect.Value) ([]byte, error) { return appendCopyText(b, v.String()) }, nil
	case reflect.Bool:
		return func(b []byte, v reflect.Value) ([]byte, error) { return d.AppendBool(b, v.Bool()), nil }, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return func(b []byte, v reflect.Value) ([]byte, error) { return strconv.AppendInt(b, v.Int(), 10), nil }, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16:
		return func(b []byte, v reflect.Value) ([]byte, error) { return strconv.AppendUint(b, v.Uint(), 10), nil }, nil
	case reflect.Uint32:
		// Like uint64, through the dialect, as bun does (pgdialect may write them as signed).
		return func(b []byte, v reflect.Value) ([]byte, error) {
			return d.AppendUint32(b, uint32(v.Uint())), nil //nolint:gosec // the field is a uint32
		}, nil
	case reflect.Uint64:
		return func(b []byte, v reflect.Value) ([]byte, error) { return d.AppendUint64(b, v.Uint()), nil }, nil
	case reflect.Slice:
		// Exactly []byte: bun renders some named byte slices otherwise (json.RawMessage as
		// JSON, net.IP as text).
		if t == reflect.TypeFor[[]byte]() {
			// bytea in hex form, its backslash escaped for COPY: \\x0102…
			return func(b []byte, v reflect.Value) ([]byte, error) {
				if v.IsNil() {
					return append(b, `\N`...), nil // bun writes a nil []byte as NULL
				}
				b = append(b, `\\x`...)
				return hex.AppendEncode(b, v.Bytes()), nil
			}, nil
		}
	}
	return nil, fmt.Errorf("type %s not supported by the COPY encoder", t)
}

// addrOf is a pointer to the value v holds, without the copy (and allocation) of Interface:
// appendRow's values are fields of a row passed by pointer, so they are addressable.
func addrOf[T any](v reflect.Value) *T {
	if v.CanAddr() {
		return v.Addr().Interface().(*T) //nolint:forcetypeassert // the caller matched the type
	}
	x := v.Interface().(T) //nolint:forcetypeassert // likewise
	return &x
}

// appendCopyTime renders a timestamp the way bun's PostgreSQL dialect does, without the quotes.
func appendCopyTime(b []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(b, "2006-01-02 15:04:05.999999-07:00")
}

// appendUUID is uuid.UUID.String without the allocation.
func appendUUID(b []byte, u uuid.UUID) []byte {
	var buf [36]byte
	hex.Encode(buf[0:8], u[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], u[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], u[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], u[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:], u[10:])
	return append(b, buf[:]...)
}

// appendCopyText escapes a string for the COPY text format: backslash, tab, newline and
// carriage return become backslash sequences, everything else is taken literally. Like bun's
// string literal, it refuses NUL bytes and turns each byte of invalid UTF-8 into U+FFFD.
func appendCopyText(b []byte, s string) ([]byte, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return b, errCopyNul
	}
	if !utf8.ValidString(s) {
		var fixed []byte
		for _, r := range s { // each invalid byte yields utf8.RuneError, as in bun
			fixed = utf8.AppendRune(fixed, r)
		}
		s = string(fixed)
	}
	start := 0
	for i := 0; i < len(s); i++ {
		var esc byte
		switch s[i] {
		case '\\':
			esc = '\\'
		case '\t':
			esc = 't'
		case '\n':
			esc = 'n'
		case '\r':
			esc = 'r'
		default:
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, '\\', esc)
		start = i + 1
	}
	return append(b, s[start:]...), nil
}

// appendRow appends one row: the columns tab-separated, a newline after the last.
func (e *copyEncoder[T]) appendRow(b []byte, row *T) ([]byte, error) {
	v := reflect.ValueOf(row).Elem()
	var err error
	for i := range e.fields {
		f := &e.fields[i]
		if i > 0 {
			b = append(b, '\t')
		}
		fv := v.FieldByIndex(f.index)
		if f.ptr {
			if fv.IsNil() {
				b = append(b, `\N`...)
				continue
			}
			fv = fv.Elem()
		}
		if b, err = f.append(b, fv); err != nil {
			return b, fmt.Errorf("column %s: %w", f.name, err)
		}
	}
	return append(b, '\n'), nil
}

// statement is the COPY statement that loads the encoder's rows into table.
func (e *copyEncoder[T]) statement(table string) string {
	return "COPY " + table + " (" + e.columns + ") FROM STDIN"
}

// copyFrom runs one COPY of the rows in data (complete lines from appendRow) on conn; inside a
// transaction begun on conn it is part of that transaction. data is held in memory, so the
// driver never sees a failing reader halfway through (pgdriver would leave the connection in
// the middle of the COPY protocol).
func copyFrom[T any](ctx context.Context, conn bun.Conn, e *copyEncoder[T], table string, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	return copyText(ctx, conn, e.statement(table), table, data)
}

// copyText runs the COPY statement stmt into table with data on conn (see copyFrom).
func copyText(ctx context.Context, conn bun.Conn, stmt, table string, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if _, err := pgdriver.CopyFrom(ctx, conn, bytes.NewReader(data), stmt); err != nil {
		return fmt.Errorf("copy into %s: %w", table, err)
	}
	return nil
}

// copyAll encodes rows and copies them into table in one COPY per streamChunkBytes of text.
func copyAll[T any](ctx context.Context, conn bun.Conn, e *copyEncoder[T], table string, rows []T) error {
	buf := make([]byte, 0, min(streamChunkBytes, 256*len(rows))+4096)
	var err error
	for i := range rows {
		if buf, err = e.appendRow(buf, &rows[i]); err != nil {
			return fmt.Errorf("copy into %s: %w", table, err)
		}
		if len(buf) >= streamChunkBytes {
			if err := copyFrom(ctx, conn, e, table, buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	return copyFrom(ctx, conn, e, table, buf)
}
