/* dataset.c - the C backend's element tree and writer; see dataset.h. */
#include "dataset.h"
#include "dicomsort/dicom.h"
#include "part10.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
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
	bool edited;		/* the value is edit, len bytes: for text its
				   machine string (what DCMTK holds after
				   putString()), for binary its bytes */
	unsigned char *edit;
};

/* The character sets the C backend converts exactly (dataset.h). */
enum ds_charset { DS_ASCII, DS_LATIN1, DS_UTF8 };

struct ds_file {
	const unsigned char *bytes;
	size_t size;
	struct ds_node *nodes;
	size_t count, cap;
	/* The top level's SpecificCharacterSet, as the adapter selects it:
	 * at the first value it converts, again after dicom_put_string() of
	 * it (select_charset() in dicom.cpp), not after other changes. */
	enum ds_charset charset;
	bool charset_selected, charset_ok;
	bool modified;
	size_t dataset;		/* offset of the dataset (end of the meta header) */
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

	/* Floats: DCMTK's own ftoa() writes their text (get_string), with
	 * digits printf() does not give; not reproduced yet. */
	if (!memcmp(h->vr, "FL", 2) || !memcmp(h->vr, "FD", 2) ||
	    !memcmp(h->vr, "OF", 2) || !memcmp(h->vr, "OD", 2))
		return false;
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

/*
 * A text value as DCMTK holds it: p[0..len), then a NUL when nul (a value
 * of odd length read from the source, but a UID: DcmElement::
 * newValueField() appends one, and it is no padding). buf (UID_MAX) holds
 * a cleaned UID. false: a UID too long (never claimed).
 */
struct text_value {
	const unsigned char *p;
	size_t len;
	bool nul;
};

static bool text_value(const unsigned char *bytes, const struct ds_node *n,
		       struct text_value *t, unsigned char *buf)
{
	bool uid = n->vr[0] == 'U' && n->vr[1] == 'I';

	t->nul = false;
	t->len = n->len;
	if (n->edited) {
		t->p = n->edit;
		return true;
	}
	t->p = bytes + n->value;
	if (t->len & 1 && !uid) {
		t->nul = true;
		return true;
	}
	t->p = text_of(n->vr, t->p, &t->len, buf, UID_MAX);
	return t->p != NULL;
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

int ds_tag_from_keyword(const char *keyword, uint32_t *tag)
{
	size_t even = 0;
	uint32_t t = 0;

	/* DCMTK reads "gggg,eeee" as a tag; no keyword has a comma. */
	if (keyword[0] == '\0' || strchr(keyword, ',') != NULL)
		return 0;
	/* DcmDataDictionary::findEntry(name) answers the first entry of its
	 * hash table (plain entries and those with a creator) in an even
	 * group, before any odd one or repeating range: certain when there
	 * is exactly one, and a plain one. */
	for (size_t i = 0; i < sizeof(dict_tags) / sizeof(*dict_tags); i++)
		if (dict_tags[i].keyword[0] == keyword[0] &&
		    DCM_GROUP(dict_tags[i].tag) % 2 == 0 &&
		    strcmp(dict_tags[i].keyword, keyword) == 0) {
			t = dict_tags[i].tag;
			even++;
		}
	for (size_t i = 0; i < sizeof(dict_private) / sizeof(*dict_private); i++)
		if (dict_private[i].keyword[0] == keyword[0] &&
		    DCM_GROUP(dict_private[i].tag) % 2 == 0 &&
		    strcmp(dict_private[i].keyword, keyword) == 0)
			return 0;
	if (even != 1)
		return 0;
	*tag = t;
	return 1;
}

/* The dictionary's private entry for tag under creator (DCMTK's
 * DcmHashDict::get(), then its repeating list), or NULL. */
static const char *private_dictionary(uint32_t tag, const char *creator)
{
	uint32_t keys[2] = { tag, DCM_TAG(DCM_GROUP(tag), DCM_ELEMENT(tag) & 0xff) };

	for (int k = 0; k < 2; k++) {
		size_t lo = 0, hi = sizeof(dict_private) / sizeof(*dict_private);

		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;

			if (dict_private[mid].tag < keys[k])
				lo = mid + 1;
			else
				hi = mid;
		}
		for (; lo < sizeof(dict_private) / sizeof(*dict_private) &&
		       dict_private[lo].tag == keys[k]; lo++)
			if (strcmp(dict_private[lo].creator, creator) == 0)
				return dict_private[lo].keyword;
	}
	for (size_t i = 0; i < sizeof(dict_private_ranges) / sizeof(*dict_private_ranges); i++) {
		const struct dict_private_range *r = &dict_private_ranges[i];

		if (in_part(DCM_GROUP(tag), r->group_low, r->group_high,
			    r->group_parity) &&
		    (DCM_ELEMENT(tag) == r->element ||
		     (DCM_ELEMENT(tag) & 0xff) == r->element) &&
		    strcmp(r->creator, creator) == 0)
			return r->keyword;
	}
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
		/* An item's own character set: DCMTK's conversion would
		 * follow it, the adapter's reading does not. */
		if (h->tag == TAG_SpecificCharacterSet && b->n > 1)
			return WALK_DECLINE;
		/* A private creator is text (its name is read as such). */
		if (DCM_GROUP(h->tag) & 1 && DCM_ELEMENT(h->tag) >= 0x0010 &&
		    DCM_ELEMENT(h->tag) <= 0x00ff && !string_vr(h->vr))
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
	struct text_value t;

	*len = 0;
	if (!text_value(f->bytes, n, &t, buf))
		return NULL;
	*len = t.len;
	return t.p;
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
	/* "=Name" is a UID's name to DCMTK's putString() (copying it into
	 * the meta header): a look-up the C backend does not make. */
	return v != NULL && len > 0 && v[0] != '\\' && v[0] != '=';
}

/*
 * The top level's SpecificCharacterSet, as DCMTK selects it (its values,
 * each without leading and trailing spaces): none, ISO_IR 6, ISO_IR 100
 * or ISO_IR 192, one value. Anything else - other sets, ISO 2022 code
 * extensions, several values - is DCMTK's.
 */
static bool known_charset(struct ds_file *f)
{
	const struct ds_node *n = find_top(f, TAG_SpecificCharacterSet);
	const unsigned char *v;
	size_t len;

	f->charset = DS_ASCII;
	if (n == NULL)
		return true;
	/* Odd: DCMTK reads it with a NUL after it, which is no space. */
	if (n->kind != DS_VALUE || memcmp(n->vr, "CS", 2) != 0 ||
	    (n->len & 1 && !n->edited))
		return false;
	v = n->edited ? n->edit : f->bytes + n->value;
	len = n->len;
	while (len > 0 && v[len - 1] == ' ')
		len--;
	while (len > 0 && v[0] == ' ') {
		v++;
		len--;
	}
	if (len == 0 || (len == 8 && memcmp(v, "ISO_IR 6", 8) == 0))
		return true;
	if (len == 10 && memcmp(v, "ISO_IR 100", 10) == 0) {
		f->charset = DS_LATIN1;
		return true;
	}
	if (len == 10 && memcmp(v, "ISO_IR 192", 10) == 0) {
		f->charset = DS_UTF8;
		return true;
	}
	return false;
}

/* The value of the meta header's element (0002,element) and its VR, or
 * NULL. Meta elements have explicit VRs, little endian. */
static const unsigned char *meta_value(const unsigned char *bytes, size_t end,
				       uint16_t element, const char **vr,
				       size_t *len)
{
	size_t pos = 132;

	while (pos + 8 <= end) {
		const unsigned char *b = bytes + pos;
		size_t header = part10_long_vr(b + 4) ? 12 : 8;
		uint32_t n = header == 12 ?
			(uint32_t)b[8] | (uint32_t)b[9] << 8 | (uint32_t)b[10] << 16 |
			(uint32_t)b[11] << 24 : (uint32_t)(b[6] | b[7] << 8);

		if (pos + header + n > end)
			return NULL;
		if ((uint16_t)(b[2] | b[3] << 8) == element) {
			*vr = (const char *)b + 4;
			*len = n;
			return b + header;
		}
		pos += header + n;
	}
	return NULL;
}

/* The meta header's SOP UIDs: UI if present (DCMTK would read another
 * VR's value by its own rules), and not longer than a UID the C backend
 * cleans. */
static bool plain_meta_uids(const struct part10 *p)
{
	static const uint16_t elements[] = { 0x0002, 0x0003 };

	for (size_t i = 0; i < 2; i++) {
		const char *vr;
		size_t len;

		if (meta_value(p->bytes, p->dataset, elements[i], &vr, &len) != NULL &&
		    (memcmp(vr, "UI", 2) != 0 || len > UID_MAX))
			return false;
	}
	return true;
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

		if (element == 0x0010)	/* a UI, or DCMTK finds none */
			return memcmp(b + 4, "UI", 2) == 0 && len == sizeof(want) &&
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
	if (part10_open(&p, bytes, size) == -1 || !explicit_le(&p) ||
	    !plain_meta_uids(&p))
		return DS_DECLINED;
	if ((f = calloc(1, sizeof(*f))) == NULL)
		return DS_NO_MEMORY;
	f->bytes = bytes;
	f->size = size;
	f->dataset = p.dataset;
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
			!has_sop_uid(f, TAG_SOPInstanceUID) || !known_charset(f)))
		rc = WALK_DECLINE;
	if (rc != 0) {
		ds_free(f);
		return rc == WALK_NO_MEMORY || rc == PART10_WALK_FAILED ?
		       DS_NO_MEMORY : DS_DECLINED;
	}
	*out = f;
	return 0;
}

/* A UID's first value as DCMTK's findAndGetOFString() gives it: the
 * machine string up to the first '\\'. */
static size_t first_uid(const unsigned char *v, size_t len)
{
	const unsigned char *bs = memchr(v, '\\', len);

	return bs != NULL ? (size_t)(bs - v) : len;
}

/* Whether the meta header's (0002,element) names the dataset's tag as
 * DCMTK compares them (same_uid() in dicom.cpp): both present, the same
 * first value, not empty. */
static bool meta_agrees(const struct ds_file *f, uint16_t element, uint32_t tag)
{
	unsigned char mbuf[UID_MAX], dbuf[UID_MAX];
	const struct ds_node *n = find_top(f, tag);
	const unsigned char *m, *d;
	const char *vr;
	size_t mlen, dlen;

	m = meta_value(f->bytes, f->dataset, element, &vr, &mlen);
	if (m == NULL || n == NULL || mlen > UID_MAX)
		return false;
	mlen = machine_text("UI", m, mlen, mbuf);
	mlen = first_uid(mbuf, mlen);
	if ((d = uid_value(f, n, &dlen, dbuf)) == NULL)
		return false;
	dlen = first_uid(d, dlen);
	return mlen > 0 && mlen == dlen && memcmp(mbuf, d, mlen) == 0;
}

unsigned ds_meta_disagreement(const struct ds_file *f)
{
	return (meta_agrees(f, 0x0002, TAG_SOPClassUID) ? 0 : DS_META_CLASS) |
	       (meta_agrees(f, 0x0003, TAG_SOPInstanceUID) ? 0 : DS_META_INSTANCE);
}

void ds_free(struct ds_file *f)
{
	if (f == NULL)
		return;
	for (size_t i = 0; i < f->count; i++)
		free(f->nodes[i].edit);
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

/* A text element as DCMTK writes what it holds: padded to even length.
 * Longer than a 16-bit length can say (only by an edit), its VR is
 * written as UN with a 32-bit length (DcmObject::writeTagAndLength()). */
static void put_text_value(struct out *o, const struct ds_file *f,
			   const struct ds_node *n)
{
	unsigned char buf[UID_MAX];
	struct text_value t;
	bool uid = n->vr[0] == 'U' && n->vr[1] == 'I';
	size_t total;

	if (!text_value(f->bytes, n, &t, buf)) {
		o->no_memory = true;	/* never claimed */
		return;
	}
	total = t.len + t.nul;
	total += total & 1;
	if (total > 0xffff && !part10_long_vr((const unsigned char *)n->vr))
		put_header(o, n->tag, "UN", (uint32_t)total);
	else
		put_header(o, n->tag, n->vr, (uint32_t)total);
	put_bytes(o, t.p, t.len);
	if (t.nul)
		put_bytes(o, "", 1);
	if ((t.len + t.nul) & 1)
		put_bytes(o, uid ? "" : " ", 1);
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
		put_text_value(o, f, n);
	} else {
		/* Too long for a 16-bit length (only by an edit): UN, as
		 * for text (put_text_value()). */
		bool un = n->len > 0xffff &&
			  !part10_long_vr((const unsigned char *)n->vr);

		put_header(o, n->tag, un ? "UN" : n->vr, n->len);
		put_bytes(o, n->edited ? n->edit : f->bytes + n->value, n->len);
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
	const unsigned char *nul;

	if (v == NULL) {	/* a UID too long: never claimed */
		o->no_memory = true;
		return;
	}
	nul = memchr(v, '\0', len);
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

/* ---- visiting ---- */

struct ds_elem {
	struct ds_file *f;
	struct ds_node *node;
	int depth;
	const char *creator;	/* the adapter's: first value, trimmed */
	const char *dict_creator;	/* DCMTK's own, for its dictionary */
};

/* The private creators of one item: (gggg,00xx) -> its name, the first
 * value of its text, trimmed. Only an item with private data has any. */
struct creators {
	uint32_t tag[256];
	char *name[256];
	char *dict_name[256];	/* NULL: DCMTK has none (empty value) */
	size_t count;
};

static void free_creators(struct creators *c)
{
	for (size_t i = 0; i < c->count; i++) {
		free(c->name[i]);
		free(c->dict_name[i]);
	}
	c->count = 0;
}

/* The creator DCMTK's reader gives the elements it reserves
 * (DcmPrivateTagCache: getString() as a C string): the machine string
 * up to its first NUL; a value of odd length (but a UID) as read, with
 * its padding. NULL for an empty value (not cached); "" when out of
 * memory is told apart by *failed. */
static char *dict_creator(const struct ds_file *f, const struct ds_node *n,
			  bool *failed)
{
	unsigned char buf[UID_MAX];
	struct text_value t;
	char *out;

	if (n->len == 0)
		return NULL;
	if (!text_value(f->bytes, n, &t, buf)) {
		*failed = true;
		return NULL;
	}
	const unsigned char *nul = memchr(t.p, '\0', t.len);
	size_t len = nul ? (size_t)(nul - t.p) : t.len;
	if ((out = malloc(len + 1)) == NULL) {
		*failed = true;
		return NULL;
	}
	memcpy(out, t.p, len);
	out[len] = '\0';
	return out;
}

/* The first value of a text value, as DCMTK's getOFString(0) and then the
 * adapter's std::string of its c_str() and trim() have it: up to a NUL,
 * leading and trailing spaces off. malloc'd; NULL when out of memory. */
static char *first_value(const struct ds_file *f, const struct ds_node *n)
{
	unsigned char buf[UID_MAX];
	struct text_value t;
	char *out;

	if (!text_value(f->bytes, n, &t, buf))
		return NULL;
	const unsigned char *v = t.p;
	size_t len = t.len;
	const unsigned char *bs = memchr(v, '\\', len);
	if (bs != NULL)
		len = (size_t)(bs - v);
	/* The adapter keeps it as a C string: up to a NUL. */
	const unsigned char *nul = memchr(v, '\0', len);
	if (nul != NULL)
		len = (size_t)(nul - v);
	while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\0'))
		len--;
	while (len > 0 && v[0] == ' ') {
		v++;
		len--;
	}
	if ((out = malloc(len + 1)) == NULL)
		return NULL;
	memcpy(out, v, len);
	out[len] = '\0';
	return out;
}

static int read_creators(const struct ds_file *f, uint32_t item, struct creators *c)
{
	for (uint32_t i = f->nodes[item].child; i != 0; i = f->nodes[i].next) {
		const struct ds_node *n = &f->nodes[i];

		if (!(DCM_GROUP(n->tag) & 1) || DCM_ELEMENT(n->tag) < 0x0010 ||
		    DCM_ELEMENT(n->tag) > 0x00ff || n->kind != DS_VALUE)
			continue;
		if (c->count == 256)
			return -1;	/* more than an item can hold: no */
		bool failed = false;

		c->dict_name[c->count] = dict_creator(f, n, &failed);
		c->name[c->count] = first_value(f, n);
		c->tag[c->count++] = n->tag;
		if (failed || c->name[c->count - 1] == NULL)
			return -1;
	}
	return 0;
}

/* The creator of tag in the item: the adapter's name, or DCMTK's. */
static const char *creator_of(const struct creators *c, uint32_t tag, bool dict)
{
	uint16_t el = DCM_ELEMENT(tag);

	if (!(DCM_GROUP(tag) & 1) || el < 0x1000)
		return dict ? NULL : "";
	for (size_t i = 0; i < c->count; i++)
		if (c->tag[i] == DCM_TAG(DCM_GROUP(tag), el >> 8))
			return dict ? c->dict_name[i] : c->name[i];
	return dict ? NULL : "";
}

static bool has_private(const struct ds_file *f, uint32_t item)
{
	for (uint32_t i = f->nodes[item].child; i != 0; i = f->nodes[i].next)
		if (DCM_GROUP(f->nodes[i].tag) & 1)
			return true;
	return false;
}

/* The elements of the item, each offered to fn, then the items of a
 * sequence it kept. As DCMTK's walk in dicom.cpp: the creators are read
 * before any visitor runs; a removed element's items are not visited. */
static int visit_item(struct ds_file *f, uint32_t item, int depth,
		      ds_visitor fn, void *ctx)
{
	struct creators names = { .count = 0 };
	uint32_t prev = 0, next;
	int rc = 0;

	if (has_private(f, item) && read_creators(f, item, &names) == -1) {
		free_creators(&names);
		return -1;
	}
	for (uint32_t i = f->nodes[item].child; i != 0 && rc == 0; i = next) {
		struct ds_elem e = {
			.f = f, .node = &f->nodes[i], .depth = depth,
			.creator = creator_of(&names, f->nodes[i].tag, false),
			.dict_creator = creator_of(&names, f->nodes[i].tag, true) };
		int action = fn(ctx, &e);

		next = f->nodes[i].next;
		if (action < 0 || action > DS_VISIT_REMOVE) {
			rc = -1;
			break;
		}
		if (action == DS_VISIT_REMOVE) {
			if (prev == 0)
				f->nodes[item].child = next;
			else
				f->nodes[prev].next = next;
			f->modified = true;
			continue;
		}
		prev = i;
		for (uint32_t it = f->nodes[i].kind == DS_SEQUENCE ?
				   f->nodes[i].child : 0;
		     it != 0 && rc == 0; it = f->nodes[it].next)
			rc = visit_item(f, it, depth + 1, fn, ctx);
	}
	free_creators(&names);
	return rc;
}

int ds_visit(struct ds_file *f, ds_visitor fn, void *ctx)
{
	return visit_item(f, 0, 0, fn, ctx);
}

uint32_t ds_elem_tag(const struct ds_elem *e)
{
	return e->node->tag;
}

const char *ds_elem_vr(const struct ds_elem *e)
{
	return e->node->kind == DS_SEQUENCE ? "SQ" : e->node->vr;
}

int ds_elem_depth(const struct ds_elem *e)
{
	return e->depth;
}

const char *ds_elem_private_creator(const struct ds_elem *e)
{
	return e->creator;
}

void ds_elem_keyword(const struct ds_elem *e, char *buf, size_t len)
{
	const char *vr, *keyword;

	/* A private element with a creator is looked up with it, and only
	 * entries with that creator answer. */
	if (e->dict_creator != NULL)
		keyword = private_dictionary(e->node->tag, e->dict_creator);
	else
		keyword = ds_dictionary(e->node->tag, &vr);
	/* snprintf("%s")'s result without its cost: basic asks this for
	 * every attribute no rule names. */
	if (len > 0) {
		size_t n = keyword ? strlen(keyword) : 0;

		if (n > len - 1)
			n = len - 1;
		memcpy(buf, keyword ? keyword : "", n);
		buf[n] = '\0';
	}
}

/* ---- values as text ---- */

struct text {
	char *p;
	size_t len, cap;
	bool no_memory;
};

static void text_put(struct text *t, const void *p, size_t n)
{
	if (t->no_memory || (n == 0 && t->p != NULL))
		return;
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 64;

		while (cap < t->len + n + 1)
			cap *= 2;
		char *grown = realloc(t->p, cap);
		if (grown == NULL) {
			t->no_memory = true;
			return;
		}
		t->p = grown;
		t->cap = cap;
	}
	if (n > 0)
		memcpy(t->p + t->len, p, n);
	t->len += n;
	t->p[t->len] = '\0';
}

static uint64_t get_le(const unsigned char *b, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = n; i > 0; i--)
		v = v << 8 | b[i - 1];
	return v;
}

/*
 * A binary value as DCMTK's getOFStringArray() writes it: the values
 * '\'-separated, OB and UN bytes as two hex digits, OW words as four,
 * integers in decimal, AT as (gggg,eeee), floats as OFStandard::ftoa()
 * gives them with 9 (FL, OF) or 17 (FD, OD) significant digits. OF, OD,
 * OL and OV have a VM of 1 to DCMTK: their first value only. -1 where
 * DCMTK fails: an empty OB, OW, UN, OF, OD, OL or OV.
 */
static int binary_text(const struct ds_node *n, const unsigned char *v,
		       struct text *t)
{
	const char *vr = n->vr;
	unsigned unit = binary_unit(vr);
	bool other = vr[0] == 'O' || (vr[0] == 'U' && vr[1] == 'N');
	bool first_only = other && vr[1] != 'B' && vr[1] != 'W' && vr[1] != 'N';
	size_t len = n->len;
	char buf[64];

	if (other && len == 0)
		return -1;
	if (first_only)
		len = unit;
	for (size_t at = 0; at + unit <= len; at += unit) {
		uint64_t x = get_le(v + at, unit);
		int w;

		if (at > 0)
			text_put(t, "\\", 1);
		if (!strcmp(vr, "OB") || !strcmp(vr, "UN"))
			w = snprintf(buf, sizeof(buf), "%2.2x", (unsigned)x);
		else if (!strcmp(vr, "OW"))
			w = snprintf(buf, sizeof(buf), "%4.4x", (unsigned)x);
		else if (!strcmp(vr, "US") || !strcmp(vr, "UL") || !strcmp(vr, "OL") ||
			 !strcmp(vr, "UV") || !strcmp(vr, "OV"))
			w = snprintf(buf, sizeof(buf), "%" PRIu64, x);
		else if (!strcmp(vr, "SS"))
			w = snprintf(buf, sizeof(buf), "%d", (int16_t)x);
		else if (!strcmp(vr, "SL"))
			w = snprintf(buf, sizeof(buf), "%" PRId32, (int32_t)x);
		else if (!strcmp(vr, "SV"))
			w = snprintf(buf, sizeof(buf), "%" PRId64, (int64_t)x);
		else if (!strcmp(vr, "AT"))
			w = snprintf(buf, sizeof(buf), "(%4.4x,%4.4x)",
				       (unsigned)(x & 0xffff), (unsigned)(x >> 16));
		else if (!strcmp(vr, "FL") || !strcmp(vr, "OF")) {
			uint32_t bits = (uint32_t)x;
			float fv;

			memcpy(&fv, &bits, sizeof(fv));
			w = snprintf(buf, sizeof(buf), "%.9g", (double)fv);
		} else {
			double dv;

			memcpy(&dv, &x, sizeof(dv));
			w = snprintf(buf, sizeof(buf), "%.17g", dv);
		}
		text_put(t, buf, (size_t)w);
	}
	return 0;
}

/* Latin-1 to UTF-8: each byte its code point. */
static void latin1_text(const char *v, size_t len, struct text *t)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)v[i];

		if (c < 0x80) {
			text_put(t, &v[i], 1);
		} else {
			unsigned char two[2] = { (unsigned char)(0xc0 | c >> 6),
						 (unsigned char)(0x80 | (c & 0x3f)) };
			text_put(t, two, 2);
		}
	}
}

/* UTF-8 as glibc's iconv() decodes it: forms of up to six bytes (up to
 * U+7FFFFFFF, beyond RFC 3629's U+10FFFF), no overlong form, no
 * surrogate. */
static bool valid_utf8(const unsigned char *v, size_t len)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c = v[i];
		size_t n;
		unsigned char lo = 0x80, hi = 0xbf;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			n = 1;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2;
		else if (c >= 0xf0 && c <= 0xf7)
			n = 3;
		else if (c >= 0xf8 && c <= 0xfb)
			n = 4;
		else if (c >= 0xfc && c <= 0xfd)
			n = 5;
		else
			return false;
		if (c == 0xe0)
			lo = 0xa0;	/* overlong */
		else if (c == 0xed)
			hi = 0x9f;	/* surrogates */
		else if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf8)
			lo = 0x88;
		else if (c == 0xfc)
			lo = 0x84;
		if (n > len - 1 - i)	/* cut short */
			return false;
		if (v[i + 1] < lo || v[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= n; k++)
			if (v[i + k] < 0x80 || v[i + k] > 0xbf)
				return false;
		i += n + 1;
	}
	return true;
}

/* The value of n as the adapter's element_string() gives it: its text
 * trimmed, a NUL inside read as a space, converted to UTF-8 if convert. */
static int node_string(const struct ds_file *f, const struct ds_node *n,
		       bool convert, char **utf8)
{
	const unsigned char *v = f->bytes + n->value;
	unsigned char buf[UID_MAX];
	struct text raw = { .p = NULL }, out = { .p = NULL };
	bool ascii = true;

	*utf8 = NULL;
	if (n->kind != DS_VALUE)
		return -1;
	if (!string_vr(n->vr)) {
		if (binary_text(n, n->edited ? n->edit : v, &raw) == -1)
			return -1;
	} else {
		struct text_value t;

		if (!text_value(f->bytes, n, &t, buf))
			return -1;
		text_put(&raw, t.p, t.len);
		if (t.nul)
			text_put(&raw, "", 1);
	}
	text_put(&raw, "", 0);	/* an empty value is "" */
	if (raw.no_memory) {
		free(raw.p);
		return -1;
	}
	/* The adapter's trim(): leading spaces, trailing spaces and NULs;
	 * then a NUL inside reads as a space. */
	size_t start = 0, end = raw.len;
	while (end > 0 && (raw.p[end - 1] == ' ' || raw.p[end - 1] == '\0'))
		end--;
	while (start < end && raw.p[start] == ' ')
		start++;
	for (size_t i = start; i < end; i++) {
		if (raw.p[i] == '\0')
			raw.p[i] = ' ';
		if ((unsigned char)raw.p[i] >= 0x80 || raw.p[i] == 0x1b)
			ascii = false;
	}
	if (!ascii && convert && !f->charset_selected) {
		struct ds_file *m = (struct ds_file *)f;	/* a cache */

		m->charset_ok = known_charset(m);
		m->charset_selected = true;
	}
	if (!ascii && convert && !f->charset_ok) {
		free(raw.p);	/* a set the C backend cannot follow */
		return -1;
	}
	if (ascii || !convert || (f->charset == DS_UTF8 &&
		      valid_utf8((const unsigned char *)raw.p + start, end - start))) {
		text_put(&out, raw.p + start, end - start);
	} else if (f->charset == DS_LATIN1) {
		latin1_text(raw.p + start, end - start, &out);
	} else {
		/* ASCII declared, or UTF-8 that is not: the conversion fails
		 * and the adapter reads every byte past ASCII as '?'. */
		for (size_t i = start; i < end; i++)
			text_put(&out, (unsigned char)raw.p[i] >= 0x80 ? "?" :
				 &raw.p[i], 1);
	}
	text_put(&out, "", 0);
	free(raw.p);
	if (out.no_memory) {
		free(out.p);
		return -1;
	}
	*utf8 = out.p;
	return 1;
}

/* ---- changing ---- */

/* Replace n's value by len bytes at v (copied). */
static int set_value(struct ds_file *f, struct ds_node *n, const void *v,
		     size_t len, struct error *err)
{
	unsigned char *copy = NULL;

	if (len > UINT32_MAX - 2)
		return error_set(err, ERROR_INPUT, 0, "cannot set value (too long)");
	if (len > 0 && (copy = malloc(len)) == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot set value");
	if (len > 0)
		memcpy(copy, v, len);
	free(n->edit);
	n->edit = copy;
	n->edited = true;
	n->len = (uint32_t)len;
	f->modified = true;
	return 0;
}

/*
 * A text value as DCMTK's putString() keeps it: the C string's bytes, for
 * a UID without white space (automatic input data correction), then
 * without trailing padding (NUL for a UID, else space).
 */
static int put_text_string(struct ds_file *f, struct ds_node *n,
			   const char *value, struct error *err)
{
	bool uid = n->vr[0] == 'U' && n->vr[1] == 'I';
	size_t len = strlen(value);
	char *clean;
	int rc;

	/* DCMTK takes "=Name" for a UID's name and looks it up. */
	if (uid && value[0] == '=')
		return error_set(err, ERROR_INPUT, 0, "cannot set value (a UID "
				 "name, not supported by the C backend)");
	if ((clean = malloc(len + 1)) == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot set value");
	len = machine_text(n->vr, (const unsigned char *)value, len,
			   (unsigned char *)clean);
	rc = set_value(f, n, clean, len, err);
	free(clean);
	return rc;
}

/* A binary value put as text: only zeros ("0", "0\0\0", ...) so far,
 * which is what de-identification puts there; each a value of the VR's
 * size, an odd OB count padded with one more zero byte (DCMTK's
 * alignValue()). */
static int put_binary_string(struct ds_file *f, struct ds_node *n,
			     const char *value, struct error *err)
{
	unsigned unit = binary_unit(n->vr);
	size_t count = 0, len;
	unsigned char *zeros;
	int rc;

	if (value[0] == '\0')
		return set_value(f, n, NULL, 0, err);
	for (const char *p = value; *p; p++) {
		if (*p != '0' || (p[1] != '\0' && p[1] != '\\'))
			return error_set(err, ERROR_INPUT, 0, "cannot set value "
					 "(not zeros: not supported by the C backend)");
		count++;
		if (p[1] == '\\')
			p++;
	}
	if (unit == 0)
		return error_set(err, ERROR_INPUT, 0, "cannot set value");
	len = count * unit;
	len += len & 1;
	if ((zeros = calloc(1, len)) == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot set value");
	rc = set_value(f, n, zeros, len, err);
	free(zeros);
	return rc;
}

int ds_elem_put_string(struct ds_elem *e, const char *value, struct error *err)
{
	if (e->node->kind != DS_VALUE)
		return error_set(err, ERROR_INPUT, 0, "cannot set value (a sequence)");
	if (string_vr(e->node->vr))
		return put_text_string(e->f, e->node, value, err);
	return put_binary_string(e->f, e->node, value, err);
}

int ds_elem_put_bytes(struct ds_elem *e, const void *bytes, size_t len,
		      struct error *err)
{
	unsigned unit = binary_unit(e->node->vr);

	if (e->node->kind != DS_VALUE || unit == 0 || len % 2 != 0)
		return error_set(err, ERROR_INPUT, 0, "cannot set value");
	return set_value(e->f, e->node, bytes, len, err);
}

int ds_elem_empty(struct ds_elem *e, struct error *err)
{
	e->f->modified = true;
	if (e->node->kind == DS_SEQUENCE) {
		e->node->child = 0;
		return 0;
	}
	return set_value(e->f, e->node, NULL, 0, err);
}

int ds_elem_keep_first_item(struct ds_elem *e, struct error *err)
{
	uint32_t first = e->node->child;

	if (e->node->kind != DS_SEQUENCE)
		return error_set(err, ERROR_INPUT, 0, "not a sequence");
	if (first != 0 && e->f->nodes[first].next != 0) {
		e->f->nodes[first].next = 0;
		e->f->modified = true;
	}
	return 0;
}

bool ds_modified(const struct ds_file *f)
{
	return f->modified;
}

int ds_elem_get_string(const struct ds_elem *e, char **utf8)
{
	return node_string(e->f, e->node, true, utf8);
}

int ds_get_string(const struct ds_file *f, uint32_t tag, bool convert, char **out)
{
	const struct ds_node *n = find_top(f, tag);

	*out = NULL;
	return n == NULL ? 0 : node_string(f, n, convert, out);
}

/* ---- top-level changes ---- */

/* A new node, unlinked; its index, or 0 when out of memory. */
static uint32_t new_node(struct ds_file *f)
{
	if (f->count == f->cap) {
		size_t cap = f->cap * 2;
		struct ds_node *nodes = realloc(f->nodes, cap * sizeof(*nodes));

		if (nodes == NULL)
			return 0;
		f->nodes = nodes;
		f->cap = cap;
	}
	memset(&f->nodes[f->count], 0, sizeof(f->nodes[f->count]));
	return (uint32_t)f->count++;
}

/* The top-level node with tag, and the one before it (0: first). */
static uint32_t find_top_index(const struct ds_file *f, uint32_t tag, uint32_t *prev)
{
	*prev = 0;
	for (uint32_t i = f->nodes[0].child; i != 0; i = f->nodes[i].next) {
		if (f->nodes[i].tag == tag)
			return i;
		if (f->nodes[i].tag > tag)
			break;
		*prev = i;
	}
	return 0;
}

/*
 * The top-level node DCMTK's putAndInsertString() would put into: a new
 * element of the dictionary's VR, in tag order, in place of any element
 * there (whatever its VR, a sequence included). Its index, 0 on failure.
 */
static uint32_t put_target(struct ds_file *f, uint32_t tag, struct error *err)
{
	uint32_t prev, i = find_top_index(f, tag, &prev);
	const char *vr = NULL;

	ds_dictionary(tag, &vr);
	if (!string_vr(vr) && binary_unit(vr) == 0) {
		error_set(err, ERROR_INPUT, 0, "cannot set attribute (VR %s: not "
			  "supported by the C backend)", vr);
		return 0;
	}
	if (!plain_tag(tag)) {
		error_set(err, ERROR_INPUT, 0, "cannot set attribute (not "
			  "supported by the C backend)");
		return 0;
	}
	if (i == 0) {
		if ((i = new_node(f)) == 0) {
			error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot set attribute");
			return 0;
		}
		f->nodes[i].tag = tag;
		if (prev == 0) {
			f->nodes[i].next = f->nodes[0].child;
			f->nodes[0].child = i;
		} else {
			f->nodes[i].next = f->nodes[prev].next;
			f->nodes[prev].next = i;
		}
	}
	struct ds_node *n = &f->nodes[i];

	free(n->edit);
	n->edit = NULL;
	n->edited = true;
	n->len = 0;
	n->child = 0;
	n->kind = DS_VALUE;
	memcpy(n->vr, vr, 2);
	f->modified = true;
	return i;
}

/* After SpecificCharacterSet was put: later values are read in the new
 * set, one the C backend converts or none it can follow. */
static int charset_put(struct ds_file *f, uint32_t tag, int rc, struct error *err)
{
	if (rc == 0 && tag == TAG_SpecificCharacterSet) {
		f->charset_selected = false;
		if (!known_charset(f))
			return error_set(err, ERROR_INPUT, 0, "cannot set attribute "
					 "(a character set the C backend does not "
					 "convert)");
	}
	return rc;
}

int ds_put_string(struct ds_file *f, uint32_t tag, const char *value,
		  struct error *err)
{
	uint32_t i = put_target(f, tag, err);

	if (i == 0)
		return -1;
	struct ds_elem e = { .f = f, .node = &f->nodes[i] };
	return charset_put(f, tag, ds_elem_put_string(&e, value, err), err);
}

int ds_set_string(struct ds_file *f, uint32_t tag, const char *value,
		  struct error *err)
{
	uint32_t prev, i = find_top_index(f, tag, &prev);

	if (i == 0 || f->nodes[i].kind != DS_VALUE)
		return error_set(err, ERROR_INPUT, 0, "cannot set attribute");
	struct ds_elem e = { .f = f, .node = &f->nodes[i] };
	return charset_put(f, tag, ds_elem_put_string(&e, value, err), err);
}

int ds_empty(struct ds_file *f, uint32_t tag, struct error *err)
{
	uint32_t prev, i = find_top_index(f, tag, &prev);
	struct ds_elem e = { .f = f };

	if (i == 0)
		return 0;
	e.node = &f->nodes[i];
	return ds_elem_empty(&e, err);
}

int ds_delete(struct ds_file *f, uint32_t tag)
{
	uint32_t prev, i = find_top_index(f, tag, &prev);

	if (i == 0)
		return 0;
	if (prev == 0)
		f->nodes[0].child = f->nodes[i].next;
	else
		f->nodes[prev].next = f->nodes[i].next;
	f->modified = true;
	return 0;
}

/* ---- converting to UTF-8 ---- */

/* The VRs DCMTK converts (DcmCharString's). */
static bool charset_vr(const char *vr)
{
	static const char *const vrs[] = { "PN", "SH", "LO", "LT", "ST", "UT", "UC" };

	for (size_t i = 0; i < sizeof(vrs) / sizeof(*vrs); i++)
		if (vr[0] == vrs[i][0] && vr[1] == vrs[i][1])
			return true;
	return false;
}

/* One value, as DcmCharString::convertCharacterSet(): its machine string
 * converted; replaced (putOFStringArray()) only if that changed it. -1:
 * not convertible (the whole conversion fails), -2 out of memory. */
static int convert_node(struct ds_file *f, struct ds_node *n, enum ds_charset from)
{
	unsigned char buf[UID_MAX];
	struct text_value t;
	struct text v = { .p = NULL }, out = { .p = NULL };
	bool changed = false;
	int rc = 0;

	if (!text_value(f->bytes, n, &t, buf))
		return -1;
	text_put(&v, t.p, t.len);
	if (t.nul)
		text_put(&v, "", 1);
	text_put(&v, "", 0);
	if (v.no_memory)
		return -2;
	for (size_t i = 0; i < v.len; i++)
		changed |= (unsigned char)v.p[i] >= 0x80;
	if (from == DS_ASCII && changed)
		rc = -1;
	else if (from == DS_UTF8 && !valid_utf8((unsigned char *)v.p, v.len))
		rc = -1;
	else if (from == DS_LATIN1 && changed) {
		latin1_text(v.p, v.len, &out);
		text_put(&out, "", 0);
		if (out.no_memory) {
			rc = -2;
		} else {
			struct error err = ERROR_INIT;
			size_t len = machine_text(n->vr, (unsigned char *)out.p,
						  out.len, (unsigned char *)out.p);

			rc = set_value(f, n, out.p, len, &err) == -1 ? -2 : 0;
		}
	}
	free(v.p);
	free(out.p);
	return rc;
}

static int convert_item(struct ds_file *f, uint32_t item, enum ds_charset from)
{
	for (uint32_t i = f->nodes[item].child; i != 0; i = f->nodes[i].next) {
		struct ds_node *n = &f->nodes[i];
		int rc = 0;

		if (n->kind == DS_SEQUENCE) {
			for (uint32_t it = n->child; it != 0 && rc == 0;
			     it = f->nodes[it].next)
				rc = convert_item(f, it, from);
		} else if (charset_vr(n->vr) && n->len > 0) {
			rc = convert_node(f, n, from);
		}
		if (rc != 0)
			return rc;
	}
	return 0;
}

int ds_convert_to_utf8(struct ds_file *f, struct error *err)
{
	int rc;

	f->modified = true;
	if (!known_charset(f))
		return error_set(err, ERROR_INPUT, 0, "cannot convert the character "
				 "set to UTF-8 (not one the C backend converts)");
	rc = convert_item(f, 0, f->charset);
	f->charset_selected = false;
	if (rc == -2)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot convert to UTF-8");
	if (rc == -1)
		return error_set(err, ERROR_INPUT, 0, "cannot convert the character "
				 "set to UTF-8");
	return ds_put_string(f, TAG_SpecificCharacterSet, "ISO_IR 192", err);
}

/* ---- code sequences ---- */

/* A new value node (tag, the dictionary's VR, value as putString() keeps
 * it) after prev in item (prev 0: first); its index, 0 on failure. */
static uint32_t insert_value(struct ds_file *f, uint32_t item, uint32_t prev,
			     uint32_t tag, const char *value, struct error *err)
{
	const char *vr;
	uint32_t i = new_node(f);

	if (i == 0) {
		error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot add code");
		return 0;
	}
	ds_dictionary(tag, &vr);
	f->nodes[i].tag = tag;
	memcpy(f->nodes[i].vr, vr, 2);
	f->nodes[i].kind = DS_VALUE;
	f->nodes[i].edited = true;
	if (prev == 0) {
		f->nodes[i].next = f->nodes[item].child;
		f->nodes[item].child = i;
	} else {
		f->nodes[i].next = f->nodes[prev].next;
		f->nodes[prev].next = i;
	}
	if (put_text_string(f, &f->nodes[i], value, err) == -1)
		return 0;
	return i;
}

/* A new item at the end of sequence seq holding the code's three values
 * (fill_code_item() in dicom.cpp). */
static int append_code_item(struct ds_file *f, uint32_t seq,
			    const struct dicom_code *code, struct error *err)
{
	uint32_t item = new_node(f), last = 0, a, b;

	if (item == 0)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot add code");
	f->nodes[item].kind = DS_ITEM;
	for (uint32_t i = f->nodes[seq].child; i != 0; i = f->nodes[i].next)
		last = i;
	if (last == 0)
		f->nodes[seq].child = item;
	else
		f->nodes[last].next = item;
	f->modified = true;
	if ((a = insert_value(f, item, 0, DCM_TAG(0x0008, 0x0100), code->value, err)) == 0 ||
	    (b = insert_value(f, item, a, DCM_TAG(0x0008, 0x0102), code->scheme, err)) == 0 ||
	    insert_value(f, item, b, DCM_TAG(0x0008, 0x0104), code->meaning, err) == 0)
		return -1;
	return 0;
}

/* A new, empty top-level sequence in tag order (none with tag there). */
static uint32_t insert_sequence(struct ds_file *f, uint32_t tag, struct error *err)
{
	uint32_t prev, i;

	find_top_index(f, tag, &prev);
	if ((i = new_node(f)) == 0) {
		error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot add code");
		return 0;
	}
	f->nodes[i].tag = tag;
	memcpy(f->nodes[i].vr, "SQ", 3);
	f->nodes[i].kind = DS_SEQUENCE;
	if (prev == 0) {
		f->nodes[i].next = f->nodes[0].child;
		f->nodes[0].child = i;
	} else {
		f->nodes[i].next = f->nodes[prev].next;
		f->nodes[prev].next = i;
	}
	f->modified = true;
	return i;
}

int ds_put_code_sequence(struct ds_file *f, uint32_t tag,
			 const struct dicom_code *codes, size_t count,
			 struct error *err)
{
	uint32_t seq = 0;

	f->modified = true;
	ds_delete(f, tag);
	for (size_t i = 0; i < count; i++) {
		if (seq == 0 && (seq = insert_sequence(f, tag, err)) == 0)
			return -1;
		if (append_code_item(f, seq, &codes[i], err) == -1)
			return -1;
	}
	return 0;
}

/* Whether an item's value of tag, read as findAndGetOFString() reads it
 * (first value, leading and trailing spaces off), is want. */
static bool item_value_is(const struct ds_file *f, uint32_t item, uint32_t tag,
			  const char *want)
{
	unsigned char buf[UID_MAX];
	struct text_value t;
	const struct ds_node *n = NULL;
	struct text v = { .p = NULL };
	bool same;

	for (uint32_t i = f->nodes[item].child; i != 0; i = f->nodes[i].next)
		if (f->nodes[i].tag == tag)
			n = &f->nodes[i];
	if (n == NULL || n->kind != DS_VALUE || !string_vr(n->vr))
		return want[0] == '\0' && (n == NULL || n->kind == DS_VALUE);
	if (!text_value(f->bytes, n, &t, buf))
		return false;
	text_put(&v, t.p, t.len);
	if (t.nul)
		text_put(&v, "", 1);
	text_put(&v, "", 0);
	if (v.no_memory)
		return false;
	size_t len = v.len, start = 0;
	const char *bs = memchr(v.p, '\\', len);
	if (bs != NULL)
		len = (size_t)(bs - v.p);
	while (len > 0 && v.p[len - 1] == ' ')
		len--;
	while (start < len && v.p[start] == ' ')
		start++;
	same = len - start == strlen(want) && memcmp(v.p + start, want, len - start) == 0;
	free(v.p);
	return same;
}

int ds_append_code_sequence(struct ds_file *f, uint32_t tag,
			    const struct dicom_code *codes, size_t count,
			    struct error *err)
{
	uint32_t prev, seq = find_top_index(f, tag, &prev);

	f->modified = true;
	if (seq == 0 || f->nodes[seq].kind != DS_SEQUENCE)
		return ds_put_code_sequence(f, tag, codes, count, err);
	for (size_t i = 0; i < count; i++) {
		bool present = false;

		for (uint32_t it = f->nodes[seq].child; it != 0; it = f->nodes[it].next)
			present |= item_value_is(f, it, DCM_TAG(0x0008, 0x0100), codes[i].value) &&
				   item_value_is(f, it, DCM_TAG(0x0008, 0x0102), codes[i].scheme);
		if (!present && append_code_item(f, seq, &codes[i], err) == -1)
			return -1;
	}
	return 0;
}
