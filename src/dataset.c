/* dataset.c - the C backend's element tree and writer; see dataset.h. */
#include "dataset.h"
#include "part10.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXPLICIT_LE "1.2.840.10008.1.2.1"
#define OPEN_END UINT64_MAX
/* Longer UI values (64 is the most DICOM allows) are DCMTK's: the C
 * backend copies a UID it must clean into a buffer this long. */
#define UID_MAX 256

enum ds_kind { DS_VALUE, DS_SEQUENCE, DS_ITEM };

/*
 * One node: the dataset (node 0, an item), an element, a sequence or an
 * item. Children are a list through next, so a tree is one array; index 0
 * (the dataset, nobody's child) ends a list.
 */
struct ds_node {
	uint32_t tag;
	char vr[3];
	unsigned char kind;
	uint32_t len;		/* value bytes in the source */
	size_t value;		/* offset of the value in the source */
	uint32_t child;		/* sequence: first item; item: first element */
	uint32_t next;		/* next sibling */
};

struct ds_file {
	const unsigned char *bytes;
	size_t size;
	struct ds_node *nodes;
	size_t count, cap;
};

/* ---- what the C backend claims ---- */

/* Text VRs: DCMTK's DcmByteString and its children. */
static bool string_vr(const char *vr)
{
	static const char *const vrs[] = { "AE", "AS", "CS", "DA", "DS", "DT",
					   "IS", "LO", "LT", "PN", "SH", "ST",
					   "TM", "UC", "UI", "UR", "UT" };

	for (size_t i = 0; i < sizeof(vrs) / sizeof(*vrs); i++)
		if (vr[0] == vrs[i][0] && vr[1] == vrs[i][1])
			return true;
	return false;
}

/* Bytes per value of a binary VR (1 for OB); 0: not a VR claimed here. */
static unsigned binary_unit(const char *vr)
{
	static const struct { char vr[3]; unsigned unit; } units[] = {
		{ "OB", 1 }, { "OW", 2 }, { "US", 2 }, { "SS", 2 },
		{ "AT", 4 }, { "UL", 4 }, { "SL", 4 }, { "FL", 4 },
		{ "OL", 4 }, { "OF", 4 }, { "FD", 8 }, { "OD", 8 },
		{ "SV", 8 }, { "UV", 8 }, { "OV", 8 },
	};

	for (size_t i = 0; i < sizeof(units) / sizeof(*units); i++)
		if (vr[0] == units[i].vr[0] && vr[1] == units[i].vr[1])
			return units[i].unit;
	return 0;
}

/* Tags DCMTK treats specially or a writer should not have put there: the
 * meta group inside the dataset, group lengths (DCMTK recomputes them),
 * the illegal private groups, dataset trailing padding. */
static bool plain_tag(uint32_t tag)
{
	uint16_t g = DCM_GROUP(tag);

	return g != 0x0000 && g != 0x0002 && DCM_ELEMENT(tag) != 0x0000 &&
	       !(g & 1 && g <= 0x0007) && g != 0xffff && g != 0xfffc;
}

/* An element DCMTK writes back as it is, or with its text re-padded. */
static bool plain_value(const struct part10_header *h)
{
	if (h->vr[0] == 'U' && h->vr[1] == 'I')
		return h->len <= UID_MAX;
	if (string_vr(h->vr))
		/* Odd and 16 bits long: padding would overflow the length. */
		return !(h->len == 0xffff);
	unsigned unit = binary_unit(h->vr);

	return unit != 0 && h->len % 2 == 0 && h->len % unit == 0;
}

/* isspace() in the C locale, which DCMTK's UID reader uses. */
static bool c_space(unsigned char c)
{
	return c == ' ' || (c >= '\t' && c <= '\r');
}

/*
 * A text value as DCMTK holds it after reading (its "machine string"),
 * into to (len bytes at least): for UI every white space character
 * removed, wherever it is (DcmUniqueIdentifier::makeMachineByteString(),
 * automatic input data correction), then trailing padding (NUL for UI,
 * else space) removed (DcmByteString). Its length.
 */
static size_t machine_text(const char *vr, const unsigned char *v, size_t len,
			   unsigned char *to)
{
	bool uid = vr[0] == 'U' && vr[1] == 'I';
	unsigned char pad = uid ? '\0' : ' ';
	size_t n = 0;

	for (size_t i = 0; i < len; i++)
		if (!uid || !c_space(v[i]))
			to[n++] = v[i];
	while (n > 0 && to[n - 1] == pad)
		n--;
	return n;
}

/* The machine string of a text value (a UID up to cap bytes) when it differs
 * from the value's own bytes, else NULL (*len set either way). */
static const unsigned char *text_of(const char *vr, const unsigned char *v,
				    size_t *len, unsigned char *buf, size_t cap)
{
	bool uid = vr[0] == 'U' && vr[1] == 'I';
	size_t n = *len;

	if (uid && memchr(v, ' ', n) == NULL) {
		bool space = false;
		for (size_t i = 0; i < n && !space; i++)
			space = c_space(v[i]);
		if (!space)
			uid = false;
	}
	if (!uid) {	/* only trailing padding to go: no copy */
		unsigned char pad = vr[0] == 'U' && vr[1] == 'I' ? '\0' : ' ';
		while (n > 0 && v[n - 1] == pad)
			n--;
		*len = n;
		return v;
	}
	if (n > cap)
		return NULL;
	*len = machine_text(vr, v, n, buf);
	return buf;
}

/* ---- the data dictionary ---- */

#include "dict_tags.h"

static bool in_part(uint16_t v, uint16_t low, uint16_t high, unsigned parity)
{
	return v >= low && v <= high &&
	       (parity == 0 || (parity == 1) == ((v & 1) != 0));
}

const char *ds_dictionary(uint32_t tag, const char **vr)
{
	size_t lo = 0, hi = sizeof(dict_tags) / sizeof(*dict_tags);

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (dict_tags[mid].tag == tag) {
			*vr = dict_tags[mid].vr;
			return dict_tags[mid].keyword;
		}
		if (dict_tags[mid].tag < tag)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = 0; i < sizeof(dict_ranges) / sizeof(*dict_ranges); i++) {
		const struct dict_range *r = &dict_ranges[i];

		if (in_part(DCM_GROUP(tag), r->group_low, r->group_high,
			    r->group_parity) &&
		    in_part(DCM_ELEMENT(tag), r->element_low, r->element_high,
			    r->element_parity)) {
			*vr = r->vr;
			return r->keyword;
		}
	}
	*vr = "??";	/* DCMTK's name of no VR (EVR_UNKNOWN) */
	return NULL;
}

/* ---- building the tree ---- */

struct frame {
	uint32_t node;		/* the dataset, a sequence or an item */
	uint32_t last;		/* its last child so far (0: none) */
	uint64_t end;		/* OPEN_END: ended by a delimiter */
};

struct build {
	struct ds_file *f;
	struct frame stack[2 * DICOM_MAX_DEPTH + 4];
	size_t n;
	bool no_memory;
};

enum { WALK_DECLINE = 1, WALK_NO_MEMORY = 2 };

static int add_node(struct build *b, const struct part10_header *h,
		    enum ds_kind kind, uint32_t *index)
{
	struct ds_file *f = b->f;
	struct frame *top = &b->stack[b->n - 1];

	if (f->count == f->cap) {
		size_t cap = f->cap * 2;
		struct ds_node *nodes = realloc(f->nodes, cap * sizeof(*nodes));

		if (nodes == NULL)
			return WALK_NO_MEMORY;
		f->nodes = nodes;
		f->cap = cap;
	}
	*index = (uint32_t)f->count;
	struct ds_node *node = &f->nodes[f->count++];

	memset(node, 0, sizeof(*node));
	node->tag = h->tag;
	memcpy(node->vr, h->vr, sizeof(node->vr));
	node->kind = (unsigned char)kind;
	node->len = h->len;
	node->value = (size_t)(h->offset + h->header_len);
	if (top->last != 0)
		f->nodes[top->last].next = *index;
	else
		f->nodes[top->node].child = *index;
	top->last = *index;
	return 0;
}

static int push_frame(struct build *b, uint32_t node, const struct part10_header *h)
{
	if (b->n == sizeof(b->stack) / sizeof(b->stack[0]))
		return WALK_DECLINE;
	b->stack[b->n++] = (struct frame){
		.node = node, .last = 0,
		.end = h->len == PART10_UNDEFINED ? OPEN_END :
		       h->offset + h->header_len + h->len };
	return 0;
}

static int on_header(void *ctx, const struct part10_header *h)
{
	struct build *b = ctx;
	uint32_t index;
	int rc;

	/* Containers of defined length end without a header of their own. */
	while (b->n > 1 && b->stack[b->n - 1].end != OPEN_END &&
	       h->offset >= b->stack[b->n - 1].end)
		b->n--;
	if (h->depth >= DICOM_MAX_DEPTH)
		return WALK_DECLINE;
	switch (h->node) {
	case PART10_ELEMENT:
	case PART10_SEQUENCE:
		if (!plain_tag(h->tag) || (h->prev != 0 && h->prev >= h->tag) ||
		    !h->in_item)
			return WALK_DECLINE;
		if (h->node == PART10_SEQUENCE) {
			if (memcmp(h->vr, "SQ", 2) != 0)
				return WALK_DECLINE;
			/* DCMTK's new meta header takes the first SOP UIDs a
			 * deep search finds: they must be the top level's. */
			if (b->n == 1 && h->tag < TAG_SOPInstanceUID)
				return WALK_DECLINE;
			if ((rc = add_node(b, h, DS_SEQUENCE, &index)) != 0)
				return rc;
			return push_frame(b, index, h);
		}
		if (!plain_value(h))
			return WALK_DECLINE;
		return add_node(b, h, DS_VALUE, &index);
	case PART10_ITEM:
		if ((rc = add_node(b, h, DS_ITEM, &index)) != 0)
			return rc;
		return push_frame(b, index, h);
	case PART10_ITEM_END:
	case PART10_SEQUENCE_END:
		b->n--;
		return 0;
	default:		/* encapsulated pixel data */
		return WALK_DECLINE;
	}
}

/* The value of a top-level element, or NULL. */
static const struct ds_node *find_top(const struct ds_file *f, uint32_t tag)
{
	for (uint32_t i = f->nodes[0].child; i != 0; i = f->nodes[i].next) {
		if (f->nodes[i].tag == tag)
			return &f->nodes[i];
		if (f->nodes[i].tag > tag)
			break;
	}
	return NULL;
}

/* A UI value as DCMTK's getString() has it (machine_text()), into buf
 * (UID_MAX); NULL when it does not fit (never claimed). */
static const unsigned char *uid_value(const struct ds_file *f,
				      const struct ds_node *n, size_t *len,
				      unsigned char *buf)
{
	*len = n->len;
	return text_of("UI", f->bytes + n->value, len, buf, UID_MAX);
}

/* What dicom_load() requires: SOPClassUID and SOPInstanceUID with a first
 * value; UI, so the meta header's copies are what DCMTK would make. */
static bool has_sop_uid(const struct ds_file *f, uint32_t tag)
{
	const struct ds_node *n = find_top(f, tag);

	unsigned char buf[UID_MAX];
	const unsigned char *v;
	size_t len;

	if (n == NULL || n->kind != DS_VALUE || memcmp(n->vr, "UI", 2) != 0)
		return false;
	v = uid_value(f, n, &len, buf);
	return v != NULL && len > 0 && v[0] != '\\';
}

/* The meta header's transfer syntax, byte for byte what DCMTK writes. */
static bool explicit_le(const struct part10 *p)
{
	static const char want[] = EXPLICIT_LE;	/* NUL pads it to 20 */
	size_t pos = 132;

	while (pos + 8 <= p->dataset) {
		const unsigned char *b = p->bytes + pos;
		uint16_t element = (uint16_t)(b[2] | b[3] << 8);
		size_t header = part10_long_vr(b + 4) ? 12 : 8;
		uint32_t len = header == 12 ?
			(uint32_t)b[8] | (uint32_t)b[9] << 8 | (uint32_t)b[10] << 16 |
			(uint32_t)b[11] << 24 : (uint32_t)(b[6] | b[7] << 8);

		if (element == 0x0010)
			return len == sizeof(want) &&
			       memcmp(b + header, want, sizeof(want)) == 0;
		pos += header + len;
	}
	return false;
}

int ds_open(struct ds_file **out, const unsigned char *bytes, size_t size)
{
	struct part10 p;
	struct ds_file *f;
	struct build b = { .n = 1 };
	int rc;

	*out = NULL;
	if (part10_open(&p, bytes, size) == -1 || !explicit_le(&p))
		return DS_DECLINED;
	if ((f = calloc(1, sizeof(*f))) == NULL)
		return DS_NO_MEMORY;
	f->bytes = bytes;
	f->size = size;
	f->cap = 64;
	if ((f->nodes = calloc(f->cap, sizeof(*f->nodes))) == NULL) {
		free(f);
		return DS_NO_MEMORY;
	}
	f->count = 1;
	f->nodes[0].kind = DS_ITEM;
	b.f = f;
	b.stack[0] = (struct frame){ .node = 0, .last = 0, .end = OPEN_END };
	struct part10_source src = { .bytes = bytes, .size = size };
	rc = part10_walk(&src, p.dataset, PART10_STRICT, NULL, on_header, &b);
	if (rc == 0 && (!has_sop_uid(f, TAG_SOPClassUID) ||
			!has_sop_uid(f, TAG_SOPInstanceUID)))
		rc = WALK_DECLINE;
	if (rc != 0) {
		ds_free(f);
		return rc == WALK_NO_MEMORY || rc == PART10_WALK_FAILED ?
		       DS_NO_MEMORY : DS_DECLINED;
	}
	*out = f;
	return 0;
}

void ds_free(struct ds_file *f)
{
	if (f == NULL)
		return;
	free(f->nodes);
	free(f);
}

size_t ds_element_count(const struct ds_file *f)
{
	size_t n = 0;

	for (size_t i = 1; i < f->count; i++)
		n += f->nodes[i].kind != DS_ITEM;
	return n;
}

/* ---- writing ---- */

struct out {
	unsigned char *buf;
	size_t len, cap;
	bool no_memory;
};

static unsigned char *reserve(struct out *o, size_t n)
{
	if (o->no_memory)
		return NULL;
	if (o->len + n > o->cap) {
		size_t cap = o->cap ? o->cap : 4096;

		while (cap < o->len + n)
			cap *= 2;
		unsigned char *buf = realloc(o->buf, cap);
		if (buf == NULL) {
			o->no_memory = true;
			return NULL;
		}
		o->buf = buf;
		o->cap = cap;
	}
	unsigned char *p = o->buf + o->len;
	o->len += n;
	return p;
}

static void put_bytes(struct out *o, const void *p, size_t n)
{
	unsigned char *to = reserve(o, n);

	if (to != NULL && n > 0)
		memcpy(to, p, n);
}

static void put16(unsigned char *b, uint16_t v)
{
	b[0] = (unsigned char)v;
	b[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *b, uint32_t v)
{
	put16(b, (uint16_t)v);
	put16(b + 2, (uint16_t)(v >> 16));
}

/* An explicit VR little endian element header. */
static void put_header(struct out *o, uint32_t tag, const char *vr, uint32_t len)
{
	bool long_vr = part10_long_vr((const unsigned char *)vr);
	unsigned char *b = reserve(o, long_vr ? 12 : 8);

	if (b == NULL)
		return;
	put16(b, DCM_GROUP(tag));
	put16(b + 2, DCM_ELEMENT(tag));
	b[4] = (unsigned char)vr[0];
	b[5] = (unsigned char)vr[1];
	if (long_vr) {
		put16(b + 6, 0);
		put32(b + 8, len);
	} else {
		put16(b + 6, (uint16_t)len);
	}
}

/* An item or delimiter header. */
static void put_marker(struct out *o, uint16_t element, uint32_t len)
{
	unsigned char *b = reserve(o, 8);

	if (b == NULL)
		return;
	put16(b, 0xfffe);
	put16(b + 2, element);
	put32(b + 4, len);
}

/*
 * A text value as DCMTK writes it (DcmByteString::makeDicomByteString()):
 * its machine string, with one pad added if that is odd. A value of odd
 * length in the source was read with a NUL after it (DcmElement::
 * newValueField()): not padding but for a UID, so such a value is
 * written as it is with that NUL. read: the value is one read from the
 * source, not one put (a C string).
 */
static void put_text(struct out *o, uint32_t tag, const char *vr,
		     const unsigned char *v, size_t len, bool read)
{
	unsigned char buf[UID_MAX];
	bool uid = vr[0] == 'U' && vr[1] == 'I';
	char pad = uid ? '\0' : ' ';

	if (read && len & 1 && !uid) {
		put_header(o, tag, vr, (uint32_t)len + 1);
		put_bytes(o, v, len);
		put_bytes(o, "", 1);
		return;
	}
	v = text_of(vr, v, &len, buf, sizeof(buf));
	if (v == NULL) {	/* a UID over UID_MAX: never claimed */
		o->no_memory = true;
		return;
	}
	put_header(o, tag, vr, (uint32_t)(len + (len & 1)));
	put_bytes(o, v, len);
	if (len & 1)
		put_bytes(o, &pad, 1);
}

static void put_item(const struct ds_file *f, struct out *o, uint32_t item);

static void put_node(const struct ds_file *f, struct out *o, const struct ds_node *n)
{
	if (n->kind == DS_SEQUENCE) {
		put_header(o, n->tag, "SQ", PART10_UNDEFINED);
		for (uint32_t i = n->child; i != 0; i = f->nodes[i].next) {
			put_marker(o, 0xe000, PART10_UNDEFINED);
			put_item(f, o, i);
			put_marker(o, 0xe00d, 0);
		}
		put_marker(o, 0xe0dd, 0);
	} else if (string_vr(n->vr)) {
		put_text(o, n->tag, n->vr, f->bytes + n->value, n->len, true);
	} else {
		put_header(o, n->tag, n->vr, n->len);
		put_bytes(o, f->bytes + n->value, n->len);
	}
}

static void put_item(const struct ds_file *f, struct out *o, uint32_t item)
{
	for (uint32_t i = f->nodes[item].child; i != 0; i = f->nodes[i].next)
		put_node(f, o, &f->nodes[i]);
}

/* A meta header UID value: the dataset's, as DCMTK copies it (getString(),
 * then putString() of a C string: up to the first NUL). */
static void put_meta_uid(struct out *o, uint32_t tag, const unsigned char *v,
			 size_t len)
{
	const unsigned char *nul = memchr(v, '\0', len);

	put_text(o, tag, "UI", v, nul ? (size_t)(nul - v) : len, false);
}

/* The meta header DCMTK writes for EWM_createNewMeta (DcmFileFormat::
 * validateMetaInfo()): these six elements after the group length. */
static void put_meta(const struct ds_file *f, struct out *o)
{
	static const unsigned char version[2] = { 0, 1 };
	const struct ds_node *sop_class = find_top(f, TAG_SOPClassUID);
	const struct ds_node *sop_instance = find_top(f, TAG_SOPInstanceUID);
	unsigned char buf[UID_MAX];
	const unsigned char *v;
	size_t start = o->len, len;

	put_header(o, DCM_TAG(0x0002, 0x0000), "UL", 4);
	put_bytes(o, "\0\0\0\0", 4);
	size_t after = o->len;
	put_header(o, DCM_TAG(0x0002, 0x0001), "OB", 2);
	put_bytes(o, version, 2);
	v = uid_value(f, sop_class, &len, buf);
	put_meta_uid(o, DCM_TAG(0x0002, 0x0002), v, len);
	v = uid_value(f, sop_instance, &len, buf);
	put_meta_uid(o, DCM_TAG(0x0002, 0x0003), v, len);
	put_text(o, DCM_TAG(0x0002, 0x0010), "UI",
		 (const unsigned char *)EXPLICIT_LE, strlen(EXPLICIT_LE), false);
	put_text(o, DCM_TAG(0x0002, 0x0012), "UI",
		 (const unsigned char *)DS_IMPLEMENTATION_CLASS_UID,
		 strlen(DS_IMPLEMENTATION_CLASS_UID), false);
	put_text(o, DCM_TAG(0x0002, 0x0013), "SH",
		 (const unsigned char *)DS_IMPLEMENTATION_VERSION,
		 strlen(DS_IMPLEMENTATION_VERSION), false);
	if (!o->no_memory)
		put32(o->buf + start + 8, (uint32_t)(o->len - after));
}

static int write_all(int fd, const unsigned char *p, size_t n, struct error *err)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w == -1 && errno == EINTR)
			continue;
		if (w <= 0)
			return error_set(err, ERROR_TRANSIENT,
					 w == -1 && errno != 0 ? errno : EIO,
					 "cannot write DICOM file");
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int ds_save_fd(const struct ds_file *f, int fd, bool zero_preamble,
	       struct error *err)
{
	struct out o = { .buf = NULL };
	int rc;

	if (reserve(&o, 128) != NULL)
		memcpy(o.buf, f->bytes, 128);
	if (zero_preamble && !o.no_memory)
		memset(o.buf, 0, 128);
	put_bytes(&o, "DICM", 4);
	put_meta(f, &o);
	put_item(f, &o, 0);
	if (o.no_memory)
		rc = error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot write DICOM file");
	else
		rc = write_all(fd, o.buf, o.len, err);
	free(o.buf);
	return rc;
}
