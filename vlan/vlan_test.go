package vlan

import (
	"bytes"
	"errors"
	"testing"
)

func att(id, vid uint16, ip byte) Attachment {
	return Attachment{ID: id, VID: vid, IP: [4]byte{10, 0, 1, ip}, MAC: [6]byte{2, 0, 0, 0, 1, ip}, Name: "pod"}
}

func TestTableLookups(t *testing.T) {
	tb, err := NewTable([]Attachment{att(0, 101, 1), att(5, 4094, 2)})
	if err != nil {
		t.Fatal(err)
	}
	if a := tb.Attachment(101); a == nil || a.ID != 0 {
		t.Errorf("Attachment(101) = %+v", a)
	}
	if a := tb.Attachment(4094); a == nil || a.ID != 5 {
		t.Errorf("Attachment(4094) = %+v", a)
	}
	for _, vid := range []uint16{0, 102, 4095, 65535} {
		if a := tb.Attachment(vid); a != nil {
			t.Errorf("Attachment(%d) = %+v, want nil", vid, a)
		}
	}
	if a := tb.ByIP([4]byte{10, 0, 1, 2}); a == nil || a.VID != 4094 {
		t.Errorf("ByIP = %+v", a)
	}
	if a := tb.ByID(3); a != nil {
		t.Errorf("ByID(3) = %+v, want nil", a)
	}
	if a := tb.ByID(9999); a != nil {
		t.Errorf("ByID(9999) = %+v, want nil", a)
	}
	if tb.Len() != 2 || len(tb.All()) != 2 {
		t.Errorf("Len %d All %d, want 2", tb.Len(), len(tb.All()))
	}
}

func TestTableRejectsEveryConflictTogether(t *testing.T) {
	_, err := NewTable([]Attachment{att(0, 101, 1), att(1, 101, 2), att(2, 102, 1), att(0, 103, 3), att(4, 0, 4), att(5, 4095, 5)})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v, want ErrConflict", err)
	}
	for _, want := range []string{"VID 101", "IP 10.0.1.1", "ID 0", "VID 0", "VID 4095"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestPopPushRoundTrip(t *testing.T) {
	tagged := []byte{
		0, 1, 2, 3, 4, 5, // dst
		6, 7, 8, 9, 10, 11, // src
		0x81, 0x00, 0x20, 0x65, // TPID, PCP 1, VID 101
		0x08, 0x00, 0xaa, 0xbb, // IPv4, payload
	}
	buf := append([]byte(nil), tagged...)
	untagged := Pop(buf)
	want := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00, 0xaa, 0xbb}
	if !bytes.Equal(untagged, want) {
		t.Fatalf("Pop = %x, want %x", untagged, want)
	}
	Push(buf, 0x2065)
	if !bytes.Equal(buf, tagged) {
		t.Fatalf("Push = %x, want %x", buf, tagged)
	}
	if n := testing.AllocsPerRun(100, func() { Push(buf, 0x2065); Pop(buf) }); n != 0 {
		t.Errorf("Pop+Push allocate %v times", n)
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tb, _ := NewTable([]Attachment{att(0, 101, 1)})
	if n := testing.AllocsPerRun(100, func() { tb.Attachment(101); tb.ByIP([4]byte{10, 0, 1, 1}) }); n != 0 {
		t.Errorf("lookups allocate %v times", n)
	}
}
