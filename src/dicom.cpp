/*
 * dicom.cpp - the DICOM adapter over DCMTK's dcmdata; see dicom.h.
 * The only C++ in the tree: every function is extern "C", catches every
 * exception and turns OFCondition into struct error.
 */
#include "dicomsort/dicom.h"
#include "dicomsort/codestream.h"
#include "dataset.h"
#include "part10.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcdicent.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcostrma.h>
#include <dcmtk/dcmdata/dcostrmb.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmdata/dcspchrs.h>
#include <dcmtk/dcmdata/dctag.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcvr.h>
#include <dcmtk/dcmdata/dcvrsl.h>
#include <dcmtk/dcmdata/dcwcache.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/oflog/oflog.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iconv.h>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* The C backend (dataset.h) writes the meta header this DCMTK would. */
static constexpr bool same_text(const char *a, const char *b)
{
	return *a == *b && (*a == '\0' || same_text(a + 1, b + 1));
}
static_assert(same_text(DS_IMPLEMENTATION_CLASS_UID, OFFIS_IMPLEMENTATION_CLASS_UID) &&
	      same_text(DS_IMPLEMENTATION_VERSION, OFFIS_DTK_IMPLEMENTATION_VERSION_NAME),
	      "dataset.h names another DCMTK version's implementation");

/*
 * A file's bytes. std::allocator, but a char it makes is left unset
 * (default-initialised): the bytes are read into it right away, so
 * resize() does not zero them first, as std::string's does (a memset of
 * the whole file, 128 KiB for a 256x256 image, before its read).
 */
template <typename T> struct uninit_allocator : std::allocator<T> {
	template <typename U> struct rebind {
		typedef uninit_allocator<U> other;
	};
	uninit_allocator() = default;
	template <typename U>
	uninit_allocator(const uninit_allocator<U> &) noexcept {}
	template <typename U> void construct(U *p) noexcept
	{
		::new (static_cast<void *>(p)) U;
	}
	template <typename U, typename... Args>
	void construct(U *p, Args &&...args)
	{
		::new (static_cast<void *>(p)) U(std::forward<Args>(args)...);
	}
};
typedef std::vector<char, uninit_allocator<char>> file_bytes;

/* size unset bytes; data() is never NULL, even for none. */
static void make_bytes(file_bytes &mem, size_t size)
{
	mem.reserve(size > 0 ? size : 1);
	mem.resize(size);
}

/* A top-level value changed on the fast path: its new bytes, padded. */
struct light_edit {
	const struct part10_elem *elem;
	std::string value;
};

struct dicom_file {
	/* DCMTK's object, made on first use: a file the fast path files
	 * never needs one (making and freeing it was ~4% of a small file's
	 * CPU in sort mode). */
	std::unique_ptr<DcmFileFormat> format_;
	DcmFileFormat &format()
	{
		if (!format_)
			format_.reset(new DcmFileFormat);
		return *format_;
	}
	DcmDataset *dataset = nullptr;
	/* Selecting a character set opens iconv: do it once per file. */
	DcmSpecificCharacterSet charset;
	bool charset_tried = false;
	bool charset_ok = false;
	std::string charset_name;
	/* Any change at all (even one that failed): the file's own bytes are
	 * no longer the object. */
	bool modified = false;
	/* Write 128 zero bytes as the preamble, whatever the source had. */
	bool zero_preamble = false;
	/*
	 * The fast path (part10.h). While light, DCMTK has not parsed the
	 * file: its bytes and their index answer for it, and top-level text
	 * values changed in place are kept as edits. The first request the
	 * index cannot answer has DCMTK parse the bytes ("promote") and
	 * replays the edits onto DCMTK's dataset.
	 */
	bool light = false;
	file_bytes mem;		/* the file's bytes, parsed in memory */
	std::string path;		/* for promotion's error messages */
	/* dicom_load_fd_head(): mem holds only the file's head, the rest
	 * is read from this descriptor (the caller's) when it is needed
	 * (reach(), complete()); -1 once mem holds every byte. */
	int head_fd = -1;
	struct part10 index {};
	std::vector<light_edit> edits;
	/* DCMTK refused bytes the index vouched for (a bug of the index):
	 * every later request fails with this, saving included, so the file
	 * is rejected rather than sorted on half-read values. */
	bool unreadable = false;
	struct error promote_err = ERROR_INIT;
	/* The C backend (dataset.h) holds the object instead of DCMTK: a
	 * file it claims, once the fast path is left (promote()), or from the
	 * load on with DICOMSORT_TEST_BACKEND=c (test_backend()). */
	struct ds_file *c = nullptr;

	~dicom_file()
	{
		ds_free(c);
		part10_free(&index);
	}
};

struct dicom_elem {
	struct ds_elem *c;	/* the C backend's element, or NULL */
	struct dicom_file *file;
	DcmElement *element;
	DcmItem *parent;
	int depth;
	char vr[3];
	const char *creator;	/* in the walk's map of its item's creators */
};

static int fail(struct error *err, enum error_kind kind, int errnum,
		const char *what, const OFCondition &cond)
{
	return error_set(err, kind, errnum, "%s (%s)", what, cond.text());
}

/*
 * The dictionary files DCMTK will read, as DcmDataDictionary::
 * loadExternalDictionaries() finds them: DCMDICTPATH, a list separated by
 * ENVIRONMENT_PATH_SEPARATOR (empty entries skipped), or the built-in
 * default when it is unset or empty. Each must be a regular file we can
 * read. A cheap check at start (an open and an fstat each): the parse
 * itself (430 KB of text, ~25 ms) waits for the first file that needs
 * DCMTK - most never do (the fast path, the C backend).
 */
static int check_dictionary_files(struct error *err)
{
	const char *env = getenv(DCM_DICT_ENVIRONMENT_VARIABLE);
	std::string list = env != nullptr && *env != '\0' ? env :
			   DCM_DICT_DEFAULT_PATH;
	size_t at = 0;

	while (at <= list.size()) {
		size_t end = list.find(ENVIRONMENT_PATH_SEPARATOR, at);
		std::string file = list.substr(at, end == std::string::npos ?
					       std::string::npos : end - at);
		struct stat st;
		int fd;

		at = end == std::string::npos ? list.size() + 1 : end + 1;
		if (file.empty())
			continue;
		fd = open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (fd == -1)
			return error_set(err, ERROR_SETUP, errno, "the DICOM "
					 "data dictionary could not be loaded "
					 "(DCMDICTPATH?): %s", file.c_str());
		bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
		close(fd);
		if (!regular)
			return error_set(err, ERROR_SETUP, 0, "the DICOM data "
					 "dictionary could not be loaded "
					 "(DCMDICTPATH?): %s: not a regular file",
					 file.c_str());
	}
	return 0;
}

extern "C" int dicom_init(struct error *err)
{
	try {
		OFLog::configure(OFLogger::OFF_LOG_LEVEL);
		/* A standard attribute written as UN (by a system that did
		 * not know it) is read with its dictionary VR, a sequence as
		 * a sequence: otherwise its value would be hex to every rule,
		 * every layout value and every pseudonym. Process-wide, so
		 * set here, before any thread (CP 246 covers the undefined
		 * length form and is on by default). */
		dcmEnableUnknownVRConversion.set(OFTrue);
		dcmEnableCP246Support.set(OFTrue);
		/* The dictionary itself is parsed on first use: DCMTK's
		 * global (GlobalDcmDataDictionary::rdlock()) creates it
		 * once, under its write lock, whichever thread comes first;
		 * dictionary_ready() checks the result before a parse. */
		return check_dictionary_files(err);
	} catch (...) {
		return error_set(err, ERROR_SETUP, 0, "DICOM library setup failed");
	}
}

/* Before DCMTK parses anything: its dictionary loaded (on the first call,
 * by whichever thread; a read lock afterwards). Files that were there at
 * start but do not parse as a dictionary fail each file that needs DCMTK
 * - kept, never quarantined - rather than read it without one. */
static int dictionary_ready(struct error *err)
{
	if (dcmDataDict.isDictionaryLoaded())
		return 0;
	return error_set(err, ERROR_SETUP, 0, "the DICOM data dictionary "
			 "could not be loaded (DCMDICTPATH?)");
}

/* ---- loading ---- */

/* Up to len bytes from the start of path (or of mem, the file's bytes
 * when they are in memory); 0 if it cannot be read. */
static size_t read_head(const char *path, const file_bytes *mem,
			unsigned char *buf, size_t len)
{
	if (mem != nullptr) {
		size_t n = std::min(len, mem->size());

		memcpy(buf, mem->data(), n);
		return n;
	}
	FILE *f = fopen(path, "rb");
	size_t n;

	if (f == nullptr)
		return 0;
	n = fread(buf, 1, len, f);
	fclose(f);
	return n;
}

/* Something that starts like a bare dataset: a tag of group 0008 (or
 * 0002/0010, rarer) in either byte order. */
static bool looks_like_dataset(const char *path, const file_bytes *mem)
{
	unsigned char b[4];

	if (read_head(path, mem, b, sizeof(b)) < sizeof(b))
		return false;
	unsigned le = b[0] | (b[1] << 8), be = (b[0] << 8) | b[1];
	return le == 0x0008 || be == 0x0008 || le == 0x0002 || le == 0x0010;
}

/* The start of a Part 10 file: "DICM" after the preamble, or a meta
 * header (group 0002) written without the preamble; or a file cut inside
 * the usual all-zero preamble. */
static bool looks_like_part10(const char *path, const file_bytes *mem)
{
	unsigned char b[132];
	size_t n = read_head(path, mem, b, sizeof(b));

	if (n >= 2 && b[0] == 0x02 && b[1] == 0x00)
		return true;
	if (n < sizeof(b)) {
		for (size_t i = 0; i < n; i++)
			if (b[i] != 0)
				return false;
		return true;
	}
	return memcmp(b + 128, "DICM", 4) == 0;
}

static bool has_value(DcmDataset *ds, const DcmTagKey &key)
{
	OFString v;

	return ds->findAndGetOFString(key, v).good() && !v.empty();
}

static long long file_size(const char *path, const file_bytes *mem)
{
	struct stat st;

	if (mem != nullptr)
		return (long long)mem->size();
	return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/*
 * The elements of an item and the items of a sequence, in order.
 * getElement(i) and getItem(i) walk DCMTK's list from its head every time,
 * so a loop over them is quadratic in the count (an item of 100,000
 * elements: 5 * 10^9 steps); following the list is linear.
 */
template <typename Child, typename Container>
static std::vector<Child *> children_of(Container *parent)
{
	std::vector<Child *> out;

	out.reserve(parent->card());
	for (DcmObject *o = parent->nextInContainer(nullptr); o != nullptr;
	     o = parent->nextInContainer(o))
		out.push_back(static_cast<Child *>(o));
	return out;
}

static std::vector<DcmElement *> elements_of(DcmItem *item)
{
	return children_of<DcmElement>(item);
}

static std::vector<DcmItem *> items_of(DcmSequenceOfItems *sq)
{
	return children_of<DcmItem>(sq);
}

/* Lazily loaded values are only offsets: make sure each lies within the
 * file, or a file cut inside its pixel data would pass as whole. */
static bool values_within(DcmItem *item, long long size)
{
	for (DcmElement *e : elements_of(item)) {
		if (e->ident() == EVR_SQ) {
			for (DcmItem *sub : items_of(static_cast<DcmSequenceOfItems *>(e)))
				if (!values_within(sub, size))
					return false;
			continue;
		}
		if (e->getLengthField() != DCM_UndefinedLength &&
		    (long long)e->getLengthField() > size)
			return false;
	}
	return true;
}

static int classify_load_error(const char *path, const file_bytes *mem,
			       const OFCondition &cond, struct error *err)
{
	long long size = file_size(path, mem);

	if (size == 0)
		return error_set(err, ERROR_INPUT, 0, "empty file");
	if (size < 0)
		return error_set(err, ERROR_TRANSIENT, errno, "cannot read");
	/* A short text file ends the stream early too: only what starts like
	 * DICOM can be "truncated". */
	if (!looks_like_part10(path, mem) && !looks_like_dataset(path, mem))
		return error_set(err, ERROR_INPUT, 0, "not a DICOM file");
	if (cond == EC_StreamNotifyClient || cond == EC_InvalidStream ||
	    cond == EC_EndOfStream || cond == EC_PrematureSequDelimitationItem ||
	    cond == EC_SequEnd || cond == EC_ItemEnd)
		return fail(err, ERROR_INPUT, 0, "truncated or corrupt DICOM file",
			    cond);
	if (cond.code() == 18 || cond.code() == 19)	/* file not found/readable */
		return fail(err, ERROR_TRANSIENT, 0, "cannot read", cond);
	return fail(err, ERROR_INPUT, 0, "not a DICOM file", cond);
}

/* ---- limits checked before DCMTK parses (part10_check_limits()) ---- */

/* Whether the file at path (or its bytes in mem) nests sequences deeper
 * than DICOM_MAX_DEPTH or has more than DICOM_MAX_UNORDERED elements out of
 * tag order: the byte layer walks its headers (DCMTK's recursive, quadratic
 * reader must not meet such a file). A file it cannot open is DCMTK's to
 * refuse. */
static enum part10_limit check_limits(const char *path, const file_bytes *mem)
{
	struct part10_source src = {};
	struct stat st;

	if (mem != nullptr) {
		src.bytes = reinterpret_cast<const unsigned char *>(mem->data());
		src.size = mem->size();
		return part10_check_limits(&src);
	}
	src.fd = open(path, O_RDONLY | O_CLOEXEC);
	if (src.fd == -1)
		return PART10_WITHIN_LIMITS;
	src.size = fstat(src.fd, &st) == 0 && S_ISREG(st.st_mode) ?
		   static_cast<uint64_t>(st.st_size) : PART10_SIZE_UNKNOWN;
	enum part10_limit rc = part10_check_limits(&src);
	close(src.fd);
	return rc;
}

/* What loadFile() does, from the file's bytes in memory: every value is
 * read now (a buffer stream makes no lazy values), none re-read later. */
static OFCondition read_mem(struct dicom_file *f, const file_bytes &mem,
			    E_FileReadMode mode)
{
	DcmInputBufferStream in;
	OFCondition cond = f->format().clear();

	if (cond.bad())
		return cond;
	in.setBuffer(mem.data(), static_cast<offile_off_t>(mem.size()));
	in.setEos();
	if (mode == ERM_dataset) {
		DcmDataset *ds = f->format().getDataset();
		ds->transferInit();
		cond = ds->read(in, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
		ds->transferEnd();
		return cond;
	}
	E_FileReadMode old = f->format().getReadMode();
	f->format().setReadMode(mode);
	f->format().transferInit();
	cond = f->format().read(in, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
	f->format().transferEnd();
	f->format().setReadMode(old);
	return cond;
}

/* mem: the whole file, already read (NULL: load lazily from path). */
static int load(struct dicom_file *f, const char *path, const file_bytes *mem,
		struct error *err)
{
	switch (check_limits(path, mem)) {
	case PART10_TOO_DEEP:
		return error_set(err, ERROR_INPUT, 0, "sequences nested more "
				 "than %d levels deep", DICOM_MAX_DEPTH);
	case PART10_UNORDERED:
		return error_set(err, ERROR_INPUT, 0, "more than %d elements out "
				 "of tag order", DICOM_MAX_UNORDERED);
	case PART10_WITHIN_LIMITS:
		break;
	}
	if (dictionary_ready(err) == -1)
		return -1;
	OFCondition cond = mem ? read_mem(f, *mem, ERM_fileOnly) :
		f->format().loadFile(path, EXS_Unknown, EGL_noChange,
				   DCM_MaxReadLength, ERM_fileOnly);

	if (cond == EC_FileMetaInfoHeaderMissing) {
		if (file_size(path, mem) > 0 && file_size(path, mem) < 132 &&
		    looks_like_part10(path, mem))
			return error_set(err, ERROR_INPUT, 0, "truncated DICOM "
					 "file (ends inside the preamble)");
		if (!looks_like_dataset(path, mem))
			return error_set(err, ERROR_INPUT, 0, "not a DICOM file");
		f->format().clear();
		cond = mem ? read_mem(f, *mem, ERM_dataset) :
			f->format().loadFile(path, EXS_Unknown, EGL_noChange,
					   DCM_MaxReadLength, ERM_dataset);
	}
	if (cond.bad())
		return classify_load_error(path, mem, cond, err);
	f->dataset = f->format().getDataset();
	if (!has_value(f->dataset, DCM_SOPInstanceUID) ||
	    !has_value(f->dataset, DCM_SOPClassUID))
		return error_set(err, ERROR_INPUT, 0, file_size(path, mem) > 0 ?
				 "not a DICOM file (no SOPClassUID/SOPInstanceUID)"
				 : "empty file");
	/* A deflated stream inflates beyond the file's size. */
	if (f->dataset->getOriginalXfer() != EXS_DeflatedLittleEndianExplicit &&
	    !values_within(f->dataset, file_size(path, mem)))
		return error_set(err, ERROR_INPUT, 0, "truncated DICOM file (a "
				 "value is longer than the file)");
	return 0;
}

/* ---- the fast path: the file's bytes and their index (part10.h) ---- */

static void trim(std::string &s);

/* Text VRs: their values are their bytes. */
/* A switch, not a strcmp() list: asked for every value read per file. */
static bool text_vr(const char *vr)
{
	if (vr[0] == '\0' || vr[1] == '\0' || vr[2] != '\0')
		return false;
	switch (vr[0]) {
	case 'A': return vr[1] == 'E' || vr[1] == 'S';
	case 'C': return vr[1] == 'S';
	case 'D': return vr[1] == 'A' || vr[1] == 'S' || vr[1] == 'T';
	case 'I': return vr[1] == 'S';
	case 'L': return vr[1] == 'O' || vr[1] == 'T';
	case 'P': return vr[1] == 'N';
	case 'S': return vr[1] == 'H' || vr[1] == 'T';
	case 'T': return vr[1] == 'M';
	case 'U': return vr[1] == 'C' || vr[1] == 'I' || vr[1] == 'R' ||
			 vr[1] == 'T';
	default: return false;
	}
}

/* The VR of an indexed element: as written, or the dictionary's. */
static const char *light_vr(const struct dicom_file *f,
			    const struct part10_elem *e)
{
	if (!f->index.implicit)
		return e->vr;
	DcmTag t(DCM_GROUP(e->tag), DCM_ELEMENT(e->tag));
	/* DCMTK's static table of VR names: it outlives the DcmVR. */
	return DcmVR(t.getEVR()).getVRName();
}

enum { LIGHT_ASK_DCMTK = -2 };

/*
 * A top-level value as the DCMTK path would give it (element_raw()), or
 * LIGHT_ASK_DCMTK where only DCMTK knows: a value that is not text, one
 * with an embedded NUL (DCMTK's C strings cut there), or - when ascii,
 * for a value about to be converted - one with bytes outside printable
 * ASCII (character sets, escape sequences). 1 present, 0 absent.
 */
static int light_view(const struct dicom_file *f, uint32_t tag,
		      const char **out, size_t *outlen, bool ascii = false)
{
	const struct part10_elem *e = part10_find(&f->index, tag);
	const char *v = nullptr;
	size_t len = 0, start = 0;
	bool edited = false;

	if (e == nullptr)
		return 0;
	for (const struct light_edit &ed : f->edits)
		if (ed.elem == e) {	/* as it was put, trimmed */
			v = ed.value.data();
			len = ed.value.size();
			edited = true;
			break;
		}
	if (!edited) {
		if (e->undefined_length || !text_vr(light_vr(f, e)) ||
		    e->value + e->len > f->index.size)
			return LIGHT_ASK_DCMTK;	/* past a head: reach() first */
		v = reinterpret_cast<const char *>(f->index.bytes) + e->value;
		len = e->len;
	}
	/* trim(): trailing NUL/space, then leading space. */
	while (len > 0 && (v[len - 1] == '\0' || v[len - 1] == ' '))
		len--;
	if (!edited && memchr(v, '\0', len) != nullptr)
		return LIGHT_ASK_DCMTK;
	for (size_t i = 0; !edited && ascii && i < len; i++)
		if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] >= 0x7f) {
			/* Text VRs allow CR, LF, FF and TAB. */
			if (v[i] != '\r' && v[i] != '\n' && v[i] != '\f' && v[i] != '\t')
				return LIGHT_ASK_DCMTK;
		}
	while (start < len && v[start] == ' ')
		start++;
	*out = v + start;
	*outlen = len - start;
	return 1;
}

/* Which SOP UIDs of the meta header differ from the dataset's (bits of
 * META_*): a file copied or spliced keeps its meta header as it came -
 * the layout reads the dataset - and the result says it disagrees. */
enum { META_CLASS = 1, META_INSTANCE = 2 };
static_assert(META_CLASS == DS_META_CLASS && META_INSTANCE == DS_META_INSTANCE,
	      "dataset.h's meta bits are dicom_meta_disagreement()'s");

/* Whether the top-level value of tag is present and reads as s. */
static bool light_value_is(const struct dicom_file *f, uint32_t tag,
			   const char *s)
{
	const char *v;
	size_t len;

	return light_view(f, tag, &v, &len) == 1 && len == strlen(s) &&
	       memcmp(v, s, len) == 0;
}

static unsigned light_meta_mismatch(const struct dicom_file *f)
{
	unsigned m = 0;

	if (!light_value_is(f, TAG_SOPClassUID, f->index.media_class))
		m |= META_CLASS;
	if (!light_value_is(f, TAG_SOPInstanceUID, f->index.media_instance))
		m |= META_INSTANCE;
	return m;
}

/* The meta header of f->mem, when its transfer syntax is one the fast
 * path walks (little endian, not deflated): *implicit says which. */
static bool open_light(struct dicom_file *f, bool *implicit)
{
	const unsigned char *bytes = reinterpret_cast<const unsigned char *>(f->mem.data());

	if (part10_open(&f->index, bytes, f->mem.size()) == -1)
		return false;
	DcmXfer xfer(f->index.syntax);
	if (xfer.getXfer() == EXS_Unknown ||
	    xfer.getByteOrder() != EBO_LittleEndian ||
	    xfer.getStreamCompression() != ESC_none)
		return false;
	*implicit = xfer.isImplicitVR();
	return true;
}

static int reach(struct dicom_file *f, uint32_t tag, struct error *err);

/* What load() requires of every object, from the index. */
static bool vouch_light(struct dicom_file *f)
{
	struct error ignored = ERROR_INIT;
	const char *v;
	size_t len;

	if (reach(f, TAG_SOPClassUID, &ignored) == -1 ||
	    reach(f, TAG_SOPInstanceUID, &ignored) == -1)
		return false;
	if (light_view(f, TAG_SOPClassUID, &v, &len) != 1 || len == 0 ||
	    light_view(f, TAG_SOPInstanceUID, &v, &len) != 1 || len == 0)
		return false;
	f->light = true;
	return true;
}

/* Index f->mem; true when the fast path vouches for the file. */
static bool index_light(struct dicom_file *f)
{
	bool implicit;

	return open_light(f, &implicit) &&
	       part10_index(&f->index, implicit, nullptr) == 0 &&
	       vouch_light(f);
}

/* Index the file of size bytes on fd whose head f->mem holds: the same
 * strict walk, the rest of the file read through the walker's window,
 * values skipped by offset. */
static bool index_head(struct dicom_file *f, int fd, uint64_t size)
{
	bool implicit;

	if (!open_light(f, &implicit) ||
	    part10_index_fd(&f->index, fd, size, implicit, nullptr) == -1)
		return false;
	f->head_fd = fd;
	return vouch_light(f);
}

/* Bytes [from, mem.size()) of fd into mem at from; a file shorter than
 * that is being rewritten now. */
static int read_from(int fd, file_bytes &mem, size_t from, struct error *err)
{
	size_t got = from;

	while (got < mem.size()) {
		ssize_t n = pread(fd, &mem[got], mem.size() - got,
				  static_cast<off_t>(got));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return error_set(err, ERROR_TRANSIENT, errno, "cannot read");
		if (n == 0)
			break;
		got += static_cast<size_t>(n);
	}
	if (got != mem.size())
		return error_set(err, ERROR_TRANSIENT, 0, "source changed "
				 "while it was read");
	return 0;
}

static int read_at_start(int fd, file_bytes &mem, struct error *err)
{
	return read_from(fd, mem, 0, err);
}

/* A file indexed from its head: its bytes up to upto in memory, what
 * is missing read now (a value past the head, asked for). The index
 * points into the grown bytes. */
static int extend(struct dicom_file *f, size_t upto, struct error *err)
{
	size_t have = f->mem.size();
	int rc;

	if (f->head_fd == -1 || upto <= have)
		return 0;
	f->mem.resize(upto);
	rc = read_from(f->head_fd, f->mem, have, err);
	if (rc == -1)
		f->mem.resize(have);
	f->index.bytes = reinterpret_cast<const unsigned char *>(f->mem.data());
	f->index.size = f->mem.size();
	return rc;
}

/* The value of top-level tag in memory, read if it lies past the head. */
static int reach(struct dicom_file *f, uint32_t tag, struct error *err)
{
	const struct part10_elem *e;

	if (f->head_fd == -1 || (e = part10_find(&f->index, tag)) == nullptr ||
	    e->undefined_length)
		return 0;
	return extend(f, e->value + e->len, err);
}

/*
 * A file indexed from its head: every byte read now, for what only the
 * whole file answers (DCMTK, a write). The index stays - it walked the
 * whole file - and points into the whole bytes from here on; a head that
 * reads differently now was another version.
 */
static int complete(struct dicom_file *f, struct error *err)
{
	if (f->head_fd == -1)
		return 0;
	file_bytes mem;

	make_bytes(mem, static_cast<size_t>(f->index.file_size));
	if (read_at_start(f->head_fd, mem, err) == -1)
		return -1;
	if (memcmp(mem.data(), f->mem.data(), f->mem.size()) != 0)
		return error_set(err, ERROR_TRANSIENT, 0, "source changed "
				 "while it was read");
	f->mem.swap(mem);
	f->index.bytes = reinterpret_cast<const unsigned char *>(f->mem.data());
	f->index.size = f->mem.size();
	f->head_fd = -1;
	return 0;
}

static int replay_edit(struct dicom_file *f, const struct light_edit &ed)
{
	DcmTagKey key(DCM_GROUP(ed.elem->tag), DCM_ELEMENT(ed.elem->tag));
	DcmElement *e = nullptr;

	if (f->dataset->findAndGetElement(key, e, OFFalse).bad() || e == nullptr)
		return -1;
	return e->putString(ed.value.c_str()).good() ? 0 : -1;
}

static bool test_force_dcmtk(void);

/*
 * Hand a light file to the C backend (dataset.h) when it claims the bytes,
 * replaying what was changed on the fast path: 1 done, 0 declined (DCMTK's
 * then), -1 out of memory. A light edit is a top-level text value put into
 * the element as it is (its VR kept), as replay_edit() does on DCMTK.
 */
static int promote_c(struct dicom_file *f, struct error *err)
{
	int claimed = ds_open(&f->c, reinterpret_cast<const unsigned char *>(
		f->mem.data()), f->mem.size());

	if (claimed == DS_DECLINED)
		return 0;
	if (claimed == DS_NO_MEMORY)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot read");
	for (const struct light_edit &ed : f->edits)
		if (ds_set_string(f->c, ed.elem->tag, ed.value.c_str(), err) == -1) {
			ds_free(f->c);
			f->c = nullptr;
			return -1;
		}
	return 1;
}

/*
 * Leave the fast path for a parse of the whole object: the C backend's when
 * it claims the file (every file it claims is held to DCMTK byte for byte
 * by backend_diff and fuzz_backend), else DCMTK's; then apply what was
 * changed on the fast path. The index vouched for the structure, so DCMTK
 * refusing the file here is a bug of the index; it is reported like any
 * load failure. DICOMSORT_TEST_BACKEND=dcmtk (test-only) has DCMTK parse
 * every file.
 */
static int promote(struct dicom_file *f, struct error *err)
{
	if (f->unreadable) {
		*err = f->promote_err;
		return -1;
	}
	if (!f->light)
		return 0;
	if (complete(f, err) == -1)
		return -1;
	int c = test_force_dcmtk() ? 0 : promote_c(f, err);
	if (c == -1) {
		f->unreadable = true;
		f->promote_err = *err;
		return -1;
	}
	f->light = false;
	if (c == 1) {
		f->edits.clear();
		part10_free(&f->index);
		return 0;
	}
	if (load(f, f->path.c_str(), &f->mem, err) == -1) {
		f->unreadable = true;
		f->promote_err = *err;
		return -1;
	}
	for (const struct light_edit &ed : f->edits)
		if (replay_edit(f, ed) == -1)
			return error_set(err, ERROR_INPUT, 0, "cannot set attribute");
	f->edits.clear();
	part10_free(&f->index);
	/* f->mem stays: the bytes parsed, which dicom_file_bytes() gives a
	 * caller copying an unchanged file. Without them it would have to
	 * read the source again - which a writer may have rewritten since
	 * (issue 12: a full parse, e.g. for a non-ASCII value, then
	 * published another version's bytes under this one's patient). */
	return 0;
}

/*
 * Change a top-level text value in place: 0 done, 1 when only DCMTK can
 * (absent, not text, a UID (padded with NUL), the character set, a value
 * that is not plain ASCII or too long for its header, or a file whose
 * group lengths would then be wrong). The meta header stays as it came,
 * even one whose SOP UIDs disagree with the dataset's (a splice changes
 * the edited values and nothing else; dicom_meta_disagreement()).
 */
static int light_put(struct dicom_file *f, uint32_t tag, const char *value)
{
	const struct part10_elem *e = part10_find(&f->index, tag);
	std::string v(value);

	if (e == nullptr || e->undefined_length || f->index.group_lengths ||
	    tag == TAG_SpecificCharacterSet)
		return 1;
	const char *vr = light_vr(f, e);
	if (!text_vr(vr) || strcmp(vr, "UI") == 0)
		return 1;
	for (unsigned char c : v)
		if (c < 0x20 || c >= 0x7f)
			return 1;
	if (v.size() % 2)
		v += ' ';
	if (v.size() > 0xfffe)
		return 1;
	f->modified = true;
	for (struct light_edit &ed : f->edits)
		if (ed.elem == e) {
			ed.value = v;
			return 0;
		}
	f->edits.push_back({ e, v });
	return 0;
}

static int light_save(struct dicom_file *f, int fd, struct error *err)
{
	std::vector<struct part10_edit> edits;

	std::sort(f->edits.begin(), f->edits.end(),
		  [](const light_edit &a, const light_edit &b) {
			  return a.elem->head < b.elem->head;
		  });
	for (const struct light_edit &ed : f->edits)
		edits.push_back({ ed.elem, ed.value.data(), ed.value.size() });
	return part10_write(&f->index, edits.data(), edits.size(), fd, err);
}

extern "C" int dicom_load(struct dicom_file **out, const char *path,
			struct error *err)
{
	struct dicom_file *f = nullptr;

	try {
		f = new dicom_file;
		if (load(f, path, nullptr, err) == -1) {
			delete f;
			return -1;
		}
		*out = f;
		return 0;
	} catch (...) {
		delete f;
		return error_set(err, ERROR_INPUT, 0, "unreadable DICOM file");
	}
}

/*
 * Test-only: DICOMSORT_TEST_BACKEND=dcmtk has every file parsed by DCMTK at
 * load (no fast path, no C backend), =c has the C backend (dataset.h) hold
 * every file it claims from the load on (not only once the fast path is
 * left), so a differential test can compare the outputs of both backends
 * for the same input. Unset (production): the fast path first, then the C
 * backend for a file it claims (promote()), else DCMTK.
 */
static bool test_backend(const char *name)
{
	const char *v = getenv("DICOMSORT_TEST_BACKEND");

	return v != nullptr && strcmp(v, name) == 0;
}

static bool test_force_dcmtk(void)
{
	return test_backend("dcmtk");
}

/* Parse the file's bytes in mem (taken), labelled path in messages. */
static int load_mem(struct dicom_file **out, file_bytes &mem,
		    const char *path, struct error *err)
{
	struct dicom_file *f = nullptr;

	try {
		f = new dicom_file;
		f->mem.swap(mem);
		f->path = path;
		/* The bytes stay, parsed by DCMTK or not: they are what
		 * dicom_file_bytes() gives a caller copying them unchanged. */
		int claimed = test_backend("c") ?
			ds_open(&f->c, reinterpret_cast<const unsigned char *>(
				f->mem.data()), f->mem.size()) : DS_DECLINED;

		if (claimed == DS_NO_MEMORY) {
			delete f;
			return error_set(err, ERROR_TRANSIENT, ENOMEM, "cannot read");
		}
		if (claimed == 0) {
			*out = f;
			return 0;
		}
		if (test_force_dcmtk() || !index_light(f)) {
			part10_free(&f->index);
			if (load(f, path, &f->mem, err) == -1) {
				delete f;
				return -1;
			}
		}
		*out = f;
		return 0;
	} catch (...) {
		delete f;
		return error_set(err, ERROR_INPUT, 0, "unreadable DICOM file");
	}
}

extern "C" int dicom_load_fd(struct dicom_file **out, int fd, long long size,
			   const char *path, struct error *err)
{
	if (size <= 0 || size > DICOM_LOAD_IN_MEMORY)
		return dicom_load(out, path, err);
	try {
		file_bytes mem;

		make_bytes(mem, static_cast<size_t>(size));
		if (read_at_start(fd, mem, err) == -1)
			return -1;
		return load_mem(out, mem, path, err);
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "unreadable DICOM file");
	}
}

extern "C" int dicom_load_fd_head(struct dicom_file **out, int fd,
				  long long size, const char *path,
				  struct error *err)
{
	return dicom_load_fd_head_n(out, fd, size, path, DICOM_HEAD_BYTES, err);
}

extern "C" int dicom_load_fd_head_n(struct dicom_file **out, int fd,
				    long long size, const char *path,
				    size_t head, struct error *err)
{
	struct dicom_file *f = nullptr;

	/* A test's backend (test_backend()) reads the whole file. */
	if (size <= static_cast<long long>(head) || size > DICOM_LOAD_IN_MEMORY ||
	    test_force_dcmtk() || test_backend("c"))
		return dicom_load_fd(out, fd, size, path, err);
	try {
		struct error ignored = ERROR_INIT;

		f = new dicom_file;
		make_bytes(f->mem, head);
		f->path = path;
		if (read_at_start(fd, f->mem, &ignored) == 0 &&
		    index_head(f, fd, static_cast<uint64_t>(size))) {
			*out = f;
			return 0;
		}
	} catch (...) {
	}
	/* Whatever the head cannot vouch for, the whole file decides, as
	 * it always did: the same result, the same reason. */
	delete f;
	return dicom_load_fd(out, fd, size, path, err);
}

struct dicom_bytes {
	file_bytes mem;
};

extern "C" unsigned char *dicom_bytes_new(struct dicom_bytes **out, size_t size)
{
	try {
		*out = new dicom_bytes;
		make_bytes((*out)->mem, size);
		return reinterpret_cast<unsigned char *>((*out)->mem.data());
	} catch (...) {
		delete *out;
		*out = nullptr;
		return nullptr;
	}
}

extern "C" void dicom_bytes_free(struct dicom_bytes *bytes)
{
	delete bytes;
}

extern "C" int dicom_load_bytes(struct dicom_file **out,
				struct dicom_bytes *bytes, struct error *err)
{
	try {
		return load_mem(out, bytes->mem, "(snapshot)", err);
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "unreadable DICOM file");
	}
}

extern "C" const unsigned char *dicom_file_bytes(const struct dicom_file *file,
						 size_t *len)
{
	*len = file->mem.size();
	return file->mem.empty() || file->head_fd != -1 ? nullptr :
	       reinterpret_cast<const unsigned char *>(file->mem.data());
}

extern "C" const unsigned char *dicom_file_head(const struct dicom_file *file,
						size_t *len)
{
	*len = file->mem.size();
	return file->mem.empty() ? nullptr :
	       reinterpret_cast<const unsigned char *>(file->mem.data());
}

extern "C" void dicom_free(struct dicom_file *file)
{
	delete file;
}

extern "C" bool dicom_parsed(const struct dicom_file *file)
{
	return !file->light && file->c == nullptr;
}

extern "C" const char *dicom_transfer_syntax(const struct dicom_file *file)
{
	if (file->c != nullptr)
		return UID_LittleEndianExplicitTransferSyntax;
	if (file->light || file->dataset == nullptr)
		return file->index.syntax;
	DcmXfer xfer(file->dataset->getOriginalXfer());

	return xfer.getXferID();
}

extern "C" int dicom_load_all(struct dicom_file *file, struct error *err)
{
	if (file->c != nullptr)
		return 0;	/* the bytes are in memory */
	if (file->light)
		return complete(file, err);
	try {
		OFCondition cond = file->format().loadAllDataIntoMemory();
		if (cond.bad())
			return fail(err, ERROR_INPUT, 0, "truncated DICOM file", cond);
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "unreadable DICOM file");
	}
}

/* ---- tags ---- */

extern "C" int dicom_tag_from_keyword(const char *keyword, uint32_t *tag)
{
	/* A keyword only one standard entry has (every layout's): the C
	 * tables know it without DCMTK's dictionary being loaded. */
	if (ds_tag_from_keyword(keyword, tag) == 1)
		return 0;
	try {
		DcmTag t;
		if (DcmTag::findTagFromName(keyword, t).bad())
			return -1;
		*tag = DCM_TAG(t.getGroup(), t.getElement());
		return 0;
	} catch (...) {
		return -1;
	}
}

extern "C" void dicom_keyword_from_tag(uint32_t tag, char *buf, size_t len)
{
	try {
		DcmTag t(DCM_GROUP(tag), DCM_ELEMENT(tag));
		const char *name = t.getTagName();
		snprintf(buf, len, "%s", name && strcmp(name, DcmTag_ERROR_TagName) ?
			 name : "");
	} catch (...) {
		snprintf(buf, len, "%s", "");
	}
}

/* ---- strings ---- */

/* Trailing NUL/space, then leading space, off; in place, no copy. */
static void trim(std::string &s)
{
	size_t end = s.size(), start = 0;

	while (end > 0 && (s[end - 1] == ' ' || s[end - 1] == '\0'))
		end--;
	while (start < end && s[start] == ' ')
		start++;
	s.erase(end);
	s.erase(0, start);
}

static std::string replace_non_ascii(const std::string &raw)
{
	std::string out(raw);

	for (char &c : out)
		if ((unsigned char)c >= 0x80)
			c = '?';
	return out;
}

static bool is_japanese_iso2022(const std::string &cs)
{
	return cs.find("ISO 2022 IR 87") != std::string::npos ||
	       cs.find("ISO 2022 IR 159") != std::string::npos ||
	       cs.find("ISO 2022 IR 13") != std::string::npos;
}

/* glibc's ISO-2022-JP-2 understands the escape sequences DICOM's
 * Japanese character sets use; DCMTK's iconv mapping does not. */
static bool iconv_japanese(const std::string &raw, std::string &out)
{
	iconv_t cd = iconv_open("UTF-8", "ISO-2022-JP-2");
	bool ok;

	if (cd == (iconv_t)-1)
		return false;
	std::string in(raw);
	std::string buf(in.size() * 4 + 16, '\0');
	char *ip = &in[0], *op = &buf[0];
	size_t il = in.size(), ol = buf.size();
	ok = iconv(cd, &ip, &il, &op, &ol) != (size_t)-1 &&
	     iconv(cd, nullptr, nullptr, &op, &ol) != (size_t)-1;
	iconv_close(cd);
	if (ok)
		out.assign(&buf[0], buf.size() - ol);
	return ok;
}

static bool select_charset(struct dicom_file *f)
{
	OFString cs;

	if (f->charset_tried)
		return f->charset_ok;
	f->charset_tried = true;
	f->dataset->findAndGetOFStringArray(DCM_SpecificCharacterSet, cs);
	f->charset_name = cs.c_str();
	f->charset_ok = f->charset.selectCharacterSet(cs).good();
	return f->charset_ok;
}

/* Plain ASCII needs no conversion. ESC is ASCII too, but it starts the
 * ISO 2022 escape sequences of 7-bit code extension (Japanese JIS X 0208
 * is all 7-bit bytes), so text with an ESC is converted. */
static bool is_plain_ascii(const std::string &s)
{
	for (unsigned char c : s)
		if (c >= 0x80 || c == 0x1b)
			return false;
	return true;
}

static std::string to_utf8(struct dicom_file *f, const std::string &raw,
			   bool person_name)
{
	OFString out;

	if (is_plain_ascii(raw))
		return raw;
	select_charset(f);
	if (f->charset_ok && f->charset.convertString(raw.c_str(), out,
			person_name ? "\\^=" : "\\").good())
		return std::string(out.c_str(), out.length());
	std::string jp;
	if (is_japanese_iso2022(f->charset_name) && iconv_japanese(raw, jp))
		return jp;
	return replace_non_ascii(raw);
}

static int element_raw(DcmElement *e, std::string &raw)
{
	OFString value;

	if (e->ident() == EVR_SQ)
		return -1;
	if (e->getOFStringArray(value, OFFalse).bad())
		return -1;
	raw.assign(value.c_str(), value.length());
	trim(raw);
	/* An embedded NUL would end the C string callers get, and hide
	 * what follows it from every rule: it reads as a space. */
	std::replace(raw.begin(), raw.end(), '\0', ' ');
	return 1;
}

static char *dup_bytes(const char *s, size_t len)
{
	char *p = (char *)malloc(len + 1);

	if (p != nullptr) {
		memcpy(p, s, len);
		p[len] = '\0';
	}
	return p;
}

static char *dup_string(const std::string &s)
{
	char *p = (char *)malloc(s.size() + 1);

	if (p != nullptr)
		memcpy(p, s.c_str(), s.size() + 1);
	return p;
}

static int element_string(struct dicom_file *f, DcmElement *e, char **out,
			  bool convert)
{
	std::string raw;

	*out = nullptr;
	if (element_raw(e, raw) != 1)
		return -1;
	if (convert)
		raw = to_utf8(f, raw, e->getVR() == EVR_PN);
	*out = dup_string(raw);
	return *out ? 1 : -1;
}

static int get_top(struct dicom_file *f, uint32_t tag, char **out, bool convert)
{
	try {
		DcmElement *e = nullptr;
		std::string raw;

		*out = nullptr;
		if (f->light) {
			struct error ignored = ERROR_INIT;
			int rc;

			if (reach(f, tag, &ignored) == -1)
				return -1;
			const char *v;
			size_t len;

			rc = light_view(f, tag, &v, &len, convert);
			if (rc == 1) {	/* nothing to convert */
				*out = dup_bytes(v, len);
				return *out ? 1 : -1;
			}
			if (rc == 0)
				return 0;
			if (promote(f, &ignored) == -1)
				return -1;
		}
		if (f->c != nullptr)
			return ds_get_string(f->c, tag, convert, out);
		if (f->unreadable)
			return -1;
		if (f->dataset->findAndGetElement(DcmTagKey(DCM_GROUP(tag),
				DCM_ELEMENT(tag)), e, OFFalse).bad() || e == nullptr)
			return 0;
		return element_string(f, e, out, convert);
	} catch (...) {
		return -1;
	}
}

extern "C" int dicom_get_string(struct dicom_file *file, uint32_t tag, char **utf8)
{
	return get_top(file, tag, utf8, true);
}

extern "C" int dicom_get_raw(struct dicom_file *file, uint32_t tag, char **raw)
{
	return get_top(file, tag, raw, false);
}

/* ---- changing ---- */

extern "C" int dicom_put_string(struct dicom_file *file, uint32_t tag,
			      const char *value, struct error *err)
{
	file->modified = true;
	try {
		if (file->light && light_put(file, tag, value) == 0)
			return 0;
		if (promote(file, err) == -1)
			return -1;
		if (file->c != nullptr)
			return ds_put_string(file->c, tag, value, err);
		DcmTagKey key(DCM_GROUP(tag), DCM_ELEMENT(tag));
		OFCondition cond = file->dataset->putAndInsertString(key, value);
		if (cond.bad())
			return fail(err, ERROR_INPUT, 0, "cannot set attribute", cond);
		if (tag == TAG_SpecificCharacterSet)
			file->charset_tried = false;
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot set attribute");
	}
}

extern "C" int dicom_empty(struct dicom_file *file, uint32_t tag, struct error *err)
{
	file->modified = true;
	try {
		if (file->light && (part10_find(&file->index, tag) == nullptr ||
				    light_put(file, tag, "") == 0))
			return 0;
		if (promote(file, err) == -1)
			return -1;
		if (file->c != nullptr)
			return ds_empty(file->c, tag, err);
		DcmElement *e = nullptr;
		DcmTagKey key(DCM_GROUP(tag), DCM_ELEMENT(tag));
		if (file->dataset->findAndGetElement(key, e, OFFalse).bad() || !e)
			return 0;
		OFCondition cond = e->ident() == EVR_SQ ?
			static_cast<DcmSequenceOfItems *>(e)->clear() : e->clear();
		if (cond.bad())
			return fail(err, ERROR_INPUT, 0, "cannot empty attribute", cond);
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot empty attribute");
	}
}

extern "C" int dicom_delete(struct dicom_file *file, uint32_t tag, struct error *err)
{
	file->modified = true;
	try {
		if (promote(file, err) == -1)
			return -1;
		if (file->c != nullptr)
			return ds_delete(file->c, tag);
		file->dataset->findAndDeleteElement(DcmTagKey(DCM_GROUP(tag),
						    DCM_ELEMENT(tag)), OFFalse, OFFalse);
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot delete attribute");
	}
}

extern "C" int dicom_convert_to_utf8(struct dicom_file *file, struct error *err)
{
	file->modified = true;
	try {
		if (promote(file, err) == -1)
			return -1;
		if (file->c != nullptr)
			return ds_convert_to_utf8(file->c, err);
		OFCondition cond = file->dataset->convertToUTF8();
		file->charset_tried = false;
		if (cond.bad())
			return fail(err, ERROR_INPUT, 0, "cannot convert the "
				    "character set to UTF-8", cond);
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot convert to UTF-8");
	}
}

/* One code sequence item: value, scheme and meaning, the triplet every
 * coded entry of PS3.3 Table 8.8-1 needs. */
static OFCondition fill_code_item(DcmItem *item, const struct dicom_code *code)
{
	OFCondition cond = item->putAndInsertString(DCM_CodeValue, code->value);
	if (cond.good())
		cond = item->putAndInsertString(DCM_CodingSchemeDesignator,
						code->scheme);
	if (cond.good())
		cond = item->putAndInsertString(DCM_CodeMeaning, code->meaning);
	return cond;
}

extern "C" int dicom_put_code_sequence(struct dicom_file *file, uint32_t tag,
				     const struct dicom_code *codes, size_t count,
				     struct error *err)
{
	file->modified = true;
	try {
		if (promote(file, err) == -1)
			return -1;
		if (file->c != nullptr)
			return ds_put_code_sequence(file->c, tag, codes, count, err);
		DcmTagKey key(DCM_GROUP(tag), DCM_ELEMENT(tag));
		file->dataset->findAndDeleteElement(key, OFFalse, OFFalse);
		for (size_t i = 0; i < count; i++) {
			DcmItem *item = nullptr;
			OFCondition cond = file->dataset->findOrCreateSequenceItem(
				key, item, -2);
			if (cond.good())
				cond = fill_code_item(item, &codes[i]);
			if (cond.bad())
				return fail(err, ERROR_INPUT, 0, "cannot add code", cond);
		}
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot add code sequence");
	}
}

extern "C" int dicom_append_code_sequence(struct dicom_file *file, uint32_t tag,
					const struct dicom_code *codes, size_t count,
					struct error *err)
{
	file->modified = true;
	try {
		if (promote(file, err) == -1)
			return -1;
		if (file->c != nullptr)
			return ds_append_code_sequence(file->c, tag, codes, count, err);
		DcmTagKey key(DCM_GROUP(tag), DCM_ELEMENT(tag));
		DcmSequenceOfItems *sq = nullptr;
		if (file->dataset->findAndGetSequence(key, sq, OFFalse).bad() ||
		    sq == nullptr)
			return dicom_put_code_sequence(file, tag, codes, count, err);
		for (size_t i = 0; i < count; i++) {
			bool present = false;
			for (DcmItem *item : items_of(sq)) {
				OFString v, s;
				item->findAndGetOFString(DCM_CodeValue, v);
				item->findAndGetOFString(DCM_CodingSchemeDesignator, s);
				present |= v == codes[i].value && s == codes[i].scheme;
			}
			if (present)
				continue;
			DcmItem *item = new DcmItem();
			OFCondition cond = fill_code_item(item, &codes[i]);
			if (cond.good())
				cond = sq->append(item);
			if (cond.bad()) {
				delete item;
				return fail(err, ERROR_INPUT, 0, "cannot add code", cond);
			}
		}
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot add code sequence");
	}
}

/* ---- visiting ---- */

/* The private creators of one item, (gggg,00xx) -> name: looking each one
 * up in the item per private element would be quadratic. */
typedef std::map<uint32_t, std::string> creators;

static creators creators_of(const std::vector<DcmElement *> &elements)
{
	creators out;

	for (DcmElement *e : elements) {
		const DcmTagKey &key = e->getTag();
		OFString name;

		if (!(key.getGroup() & 1) || key.getElement() < 0x0010 ||
		    key.getElement() > 0x00ff || e->getOFString(name, 0).bad())
			continue;
		std::string s(name.c_str());
		trim(s);
		out[DCM_TAG(key.getGroup(), key.getElement())] = s;
	}
	return out;
}

static const char *private_creator(const creators &names, const DcmTagKey &key)
{
	Uint16 el = key.getElement();

	if (!(key.getGroup() & 1) || el < 0x1000)
		return "";
	auto it = names.find(DCM_TAG(key.getGroup(), el >> 8));
	return it == names.end() ? "" : it->second.c_str();
}

/* Whether an item holds private data: only then are its creators read. */
static bool has_private(const std::vector<DcmElement *> &elements)
{
	for (DcmElement *e : elements)
		if (e->getGTag() & 1)
			return true;
	return false;
}

/* The VR's two letters (DCMTK's names of its internal VRs are two
 * letters too); snprintf() per element was a tenth of the walk. */
static void vr_name(DcmElement *e, char vr[3])
{
	const char *name = DcmVR(e->getVR()).getVRName();

	vr[0] = name[0];
	vr[1] = name[0] ? name[1] : '\0';
	vr[2] = '\0';
}

/* Visitors change only the element they are given (dicom.h), so the
 * item's list can be taken once before they run. */
static int walk(struct dicom_file *f, DcmItem *item, int depth, dicom_visitor fn,
		void *ctx)
{
	std::vector<DcmElement *> elements = elements_of(item);
	creators names;

	if (has_private(elements))
		names = creators_of(elements);
	for (DcmElement *e : elements) {
		struct dicom_elem elem;

		elem.c = nullptr;
		elem.file = f;
		elem.element = e;
		elem.parent = item;
		elem.depth = depth;
		vr_name(e, elem.vr);
		elem.creator = private_creator(names, e->getTag());
		if (fn(ctx, &elem) == DCM_VISIT_REMOVE) {
			f->modified = true;
			delete item->remove(e);
			continue;
		}
		if (e->ident() != EVR_SQ)
			continue;
		for (DcmItem *sub : items_of(static_cast<DcmSequenceOfItems *>(e)))
			if (walk(f, sub, depth + 1, fn, ctx) == -1)
				return -1;
	}
	return 0;
}

/* The C backend's visit, each element handed on as a struct dicom_elem. */
struct c_visit {
	struct dicom_file *file;
	dicom_visitor fn;
	void *ctx;
};

static int c_visitor(void *ctx, struct ds_elem *e)
{
	struct c_visit *v = static_cast<struct c_visit *>(ctx);
	struct dicom_elem elem = {};

	elem.c = e;
	elem.file = v->file;
	return v->fn(v->ctx, &elem) == DCM_VISIT_REMOVE ? DS_VISIT_REMOVE :
	       DS_VISIT_KEEP;
}

extern "C" int dicom_visit(struct dicom_file *file, dicom_visitor fn, void *ctx,
			 struct error *err)
{
	try {
		if (promote(file, err) == -1)
			return -1;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot walk the dataset");
	}
	if (file->c != nullptr) {
		struct c_visit v = { file, fn, ctx };

		if (ds_visit(file->c, c_visitor, &v) == -1)
			return error_set(err, ERROR_INPUT, 0, "cannot walk the dataset");
		if (ds_modified(file->c))
			file->modified = true;
		return 0;
	}
	try {
		return walk(file, file->dataset, 0, fn, ctx);
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot walk the dataset");
	}
}

extern "C" uint32_t dicom_elem_tag(const struct dicom_elem *elem)
{
	if (elem->c != nullptr)
		return ds_elem_tag(elem->c);
	return DCM_TAG(elem->element->getGTag(), elem->element->getETag());
}

extern "C" const char *dicom_elem_vr(const struct dicom_elem *elem)
{
	if (elem->c != nullptr)
		return ds_elem_vr(elem->c);
	return elem->vr;
}

extern "C" int dicom_elem_depth(const struct dicom_elem *elem)
{
	if (elem->c != nullptr)
		return ds_elem_depth(elem->c);
	return elem->depth;
}

extern "C" const char *dicom_elem_private_creator(const struct dicom_elem *elem)
{
	if (elem->c != nullptr)
		return ds_elem_private_creator(elem->c);
	return elem->creator;
}

extern "C" void dicom_elem_keyword(struct dicom_elem *elem, char *buf, size_t len)
{
	if (elem->c != nullptr) {
		ds_elem_keyword(elem->c, buf, len);
		return;
	}
	try {
		/* One look-up: a DcmTag made anew (dicom_keyword_from_tag())
		 * looks its VR up in the dictionary before its name. */
		const DcmTag &tag = elem->element->getTag();
		const DcmDataDictionary &dict = dcmDataDict.rdlock();
		const DcmDictEntry *entry = dict.findEntry(tag, tag.getPrivateCreator());
		const char *name = entry != nullptr ? entry->getTagName() : nullptr;

		snprintf(buf, len, "%s", name && strcmp(name, DcmTag_ERROR_TagName) ?
			 name : "");
		dcmDataDict.rdunlock();
	} catch (...) {
		snprintf(buf, len, "%s", "");
	}
}

extern "C" int dicom_elem_get_string(struct dicom_elem *elem, char **utf8)
{
	if (elem->c != nullptr)
		return ds_elem_get_string(elem->c, utf8);
	try {
		return element_string(elem->file, elem->element, utf8, true);
	} catch (...) {
		*utf8 = nullptr;
		return -1;
	}
}

/*
 * Text put into a binary element of a file the C backend holds (a UID's
 * pseudonym into a US written where the dictionary says UI): DCMTK parses
 * it, as it would the element it read (putString(): sscanf() per value,
 * an odd OB padded), and its encoded value becomes the C backend's. One
 * parser, so the backends cannot disagree on a value's bytes.
 */
static int c_put_binary(struct dicom_elem *elem, const char *value,
			struct error *err)
{
	uint32_t tag = ds_elem_tag(elem->c);
	DcmTag t(DCM_GROUP(tag), DCM_ELEMENT(tag), DcmVR(ds_elem_vr(elem->c)));
	DcmElement *e = nullptr;

	if (DcmItem::newDicomElementWithVR(e, t).bad() || e == nullptr)
		return error_set(err, ERROR_INPUT, 0, "cannot set value");
	std::unique_ptr<DcmElement> owned(e);
	OFCondition cond = e->putString(value);
	if (cond.bad())
		return fail(err, ERROR_INPUT, 0, "cannot set value", cond);
	Uint32 vlen = e->getLength(EXS_LittleEndianExplicit, EET_ExplicitLength);
	Uint32 total = e->calcElementLength(EXS_LittleEndianExplicit,
					    EET_ExplicitLength);
	std::string buf(total, '\0');
	DcmOutputBufferStream out(&buf[0], total);
	e->transferInit();
	cond = e->write(out, EXS_LittleEndianExplicit, EET_ExplicitLength, nullptr);
	e->transferEnd();
	void *written = nullptr;
	offile_off_t n = 0;
	out.flushBuffer(written, n);
	if (cond.bad() || n != static_cast<offile_off_t>(total) || vlen > total)
		return error_set(err, ERROR_INPUT, 0, "cannot set value");
	return ds_elem_put_bytes(elem->c, buf.data() + (total - vlen), vlen, err);
}

extern "C" int dicom_elem_put_string(struct dicom_elem *elem, const char *value,
				   struct error *err)
{
	elem->file->modified = true;
	if (elem->c != nullptr) {
		const char *vr = ds_elem_vr(elem->c);

		if (strcmp(vr, "SQ") == 0 || text_vr(vr))
			return ds_elem_put_string(elem->c, value, err);
		try {
			return c_put_binary(elem, value, err);
		} catch (...) {
			return error_set(err, ERROR_INPUT, 0, "cannot set value");
		}
	}
	try {
		OFCondition cond = elem->element->putString(value);
		if (cond.bad())
			return fail(err, ERROR_INPUT, 0, "cannot set value", cond);
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot set value");
	}
}

extern "C" int dicom_elem_keep_first_item(struct dicom_elem *elem,
					  struct error *err)
{
	if (elem->c != nullptr) {
		int rc = ds_elem_keep_first_item(elem->c, err);

		if (ds_modified(elem->file->c))
			elem->file->modified = true;
		return rc;
	}
	try {
		if (elem->element->ident() != EVR_SQ)
			return error_set(err, ERROR_INPUT, 0, "not a sequence");
		DcmSequenceOfItems *sq = static_cast<DcmSequenceOfItems *>(elem->element);
		if (sq->card() > 1)
			elem->file->modified = true;
		while (sq->card() > 1)
			delete sq->remove(sq->card() - 1);
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot change sequence");
	}
}

extern "C" int dicom_elem_empty(struct dicom_elem *elem, struct error *err)
{
	elem->file->modified = true;
	if (elem->c != nullptr)
		return ds_elem_empty(elem->c, err);
	try {
		DcmElement *e = elem->element;
		OFCondition cond = e->ident() == EVR_SQ ?
			static_cast<DcmSequenceOfItems *>(e)->clear() : e->clear();
		if (cond.bad())
			return fail(err, ERROR_INPUT, 0, "cannot empty value", cond);
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot empty value");
	}
}

/* ---- metadata inside compressed pixel data ---- */

static bool fragment_bytes(DcmPixelItem *item, std::vector<unsigned char> &out)
{
	Uint8 *p = nullptr;
	Uint32 len = item->getLength();

	out.clear();
	if (len == 0)
		return true;
	if (item->getUint8Array(p).bad() || p == nullptr)
		return false;
	out.assign(p, p + len);
	return true;
}

/* The fragments after the offset table, as frames: a fragment that starts
 * a codestream starts a frame, the others continue it. */
static bool frames_of(DcmPixelSequence *seq, enum codestream_kind kind,
		      std::vector<std::vector<unsigned char>> &frames)
{
	std::vector<unsigned char> bytes;

	for (unsigned long i = 1; i < seq->card(); i++) {
		DcmPixelItem *item = nullptr;

		if (seq->getItem(item, i).bad() || item == nullptr ||
		    !fragment_bytes(item, bytes))
			return false;
		if (frames.empty() ||
		    codestream_starts(kind, bytes.data(), bytes.size()))
			frames.emplace_back();
		frames.back().insert(frames.back().end(), bytes.begin(), bytes.end());
	}
	return true;
}

/* Replace the fragments by one per frame and, if the offset table was
 * filled, fill it anew. */
static OFCondition put_frames(DcmPixelSequence *seq,
			      std::vector<std::vector<unsigned char>> &frames)
{
	DcmPixelItem *table = nullptr;
	std::vector<unsigned char> offsets;
	Uint32 at = 0;

	while (seq->card() > 1) {
		DcmPixelItem *item = nullptr;
		OFCondition cond = seq->remove(item, seq->card() - 1);
		if (cond.bad())
			return cond;
		delete item;
	}
	for (std::vector<unsigned char> &frame : frames) {
		if (frame.size() % 2)
			frame.push_back(0);
		for (int k = 0; k < 4; k++)
			offsets.push_back(static_cast<unsigned char>(at >> (8 * k)));
		at += 8 + static_cast<Uint32>(frame.size());
		DcmPixelItem *item = new DcmPixelItem(DcmTag(DCM_Item, EVR_OB));
		OFCondition cond = item->putUint8Array(frame.data(),
						       static_cast<Uint32>(frame.size()));
		if (cond.good())
			cond = seq->insert(item);
		if (cond.bad()) {
			delete item;
			return cond;
		}
	}
	if (seq->getItem(table, 0).good() && table != nullptr &&
	    table->getLength() > 0)
		return table->putUint8Array(offsets.data(),
					    static_cast<Uint32>(offsets.size()));
	return EC_Normal;
}

extern "C" int dicom_strip_pixel_metadata(struct dicom_file *file, int *removed,
					  struct error *err)
{
	*removed = 0;
	try {
		if (promote(file, err) == -1)
			return -1;
		/* What the C backend claims has no encapsulated pixel data. */
		if (file->c != nullptr)
			return 0;
		enum codestream_kind kind = codestream_kind_of(
			DcmXfer(file->dataset->getOriginalXfer()).getXferID());
		DcmElement *e = nullptr;

		if (kind == CODESTREAM_NONE ||
		    file->dataset->findAndGetElement(DCM_PixelData, e, OFFalse).bad() ||
		    e == nullptr)
			return 0;
		DcmPixelData *pixels = dynamic_cast<DcmPixelData *>(e);
		DcmPixelSequence *seq = nullptr;
		std::vector<std::vector<unsigned char>> frames;
		if (pixels == nullptr ||
		    pixels->getEncapsulatedRepresentation(
			    file->dataset->getOriginalXfer(), nullptr, seq).bad() ||
		    seq == nullptr || !frames_of(seq, kind, frames))
			return error_set(err, ERROR_INPUT, 0, "compressed pixel "
					 "data cannot be read");
		for (std::vector<unsigned char> &frame : frames) {
			size_t len = frame.size();
			int r = codestream_strip(kind, frame.data(), frame.size(), &len);

			if (r < 0)
				return error_set(err, ERROR_INPUT, 0, "compressed "
						 "pixel data not understood (its metadata "
						 "cannot be removed)");
			frame.resize(len);
			*removed += r;
		}
		if (*removed == 0)
			return 0;
		file->modified = true;
		OFCondition cond = put_frames(seq, frames);
		if (cond.bad())
			return fail(err, ERROR_INPUT, 0, "cannot rewrite compressed "
				    "pixel data", cond);
		/* Offsets into fragments that are gone. */
		file->dataset->findAndDeleteElement(DcmTagKey(0x7fe0, 0x0001));
		file->dataset->findAndDeleteElement(DcmTagKey(0x7fe0, 0x0002));
		return 0;
	} catch (...) {
		return error_set(err, ERROR_INPUT, 0, "cannot rewrite compressed "
				 "pixel data");
	}
}

/* ---- writing ---- */

static bool same_uid(DcmItem *a, const DcmTagKey &ka, DcmItem *b,
		     const DcmTagKey &kb)
{
	OFString va, vb;

	return a->findAndGetOFString(ka, va).good() &&
	       b->findAndGetOFString(kb, vb).good() && !va.empty() && va == vb;
}

extern "C" bool dicom_bytes_reusable(const struct dicom_file *file)
{
	/* ds_open() vouched for the meta header's transfer syntax (explicit
	 * VR little endian, as the dataset) and for every value's length. */
	if (file->c != nullptr)
		return !file->modified && !ds_modified(file->c);
	try {
		/* index_light() vouched for the meta header's transfer
		 * syntax: the bytes parse as they are, whatever its SOP
		 * UIDs say (dicom_meta_disagreement()). */
		if (file->light)
			return !file->modified;
		if (file->unreadable)
			return false;
		DcmMetaInfo *meta = const_cast<dicom_file *>(file)->format().getMetaInfo();
		DcmDataset *ds = file->dataset;
		E_TransferSyntax xfer = ds->getOriginalXfer();
		OFString ts;

		if (file->modified || meta == nullptr || meta->card() == 0 ||
		    xfer == EXS_Unknown || xfer == EXS_DeflatedLittleEndianExplicit)
			return false;
		/* The meta header must name the dataset's encoding, or no
		 * reader can trust the bytes: such a file is re-encoded with
		 * a true header. SOP UIDs that disagree are only reported. */
		return meta->findAndGetOFString(DCM_TransferSyntaxUID, ts).good() &&
		       DcmXfer(xfer).getXferID() == ts;
	} catch (...) {
		return false;
	}
}

extern "C" const char *dicom_meta_disagreement(const struct dicom_file *file)
{
	static const char *const what[] = {
		nullptr,
		"meta header's MediaStorageSOPClassUID differs from the "
		"dataset's SOPClassUID",
		"meta header's MediaStorageSOPInstanceUID differs from the "
		"dataset's SOPInstanceUID",
		"meta header's MediaStorageSOPClassUID and "
		"MediaStorageSOPInstanceUID differ from the dataset's SOP UIDs",
	};

	/* A changed file gets a fresh meta header from ds_save_fd(): none is
	 * kept to disagree. */
	if (file->c != nullptr)
		return file->modified || ds_modified(file->c) ? nullptr :
		       what[ds_meta_disagreement(file->c) & 3];
	try {
		unsigned m = 0;

		if (file->light) {
			m = light_meta_mismatch(file);
		} else if (file->dataset != nullptr && !file->unreadable) {
			DcmMetaInfo *meta = const_cast<dicom_file *>(file)->
				format().getMetaInfo();

			if (meta == nullptr || meta->card() == 0)
				return nullptr;	/* no header to disagree */
			if (!same_uid(meta, DCM_MediaStorageSOPClassUID,
				      file->dataset, DCM_SOPClassUID))
				m |= META_CLASS;
			if (!same_uid(meta, DCM_MediaStorageSOPInstanceUID,
				      file->dataset, DCM_SOPInstanceUID))
				m |= META_INSTANCE;
		}
		return what[m & 3];
	} catch (...) {
		return nullptr;
	}
}

/* errno after a failed write, if it says anything. */
static int saved_errno(void)
{
	return errno != 0 ? errno : EIO;
}

extern "C" void dicom_zero_preamble(struct dicom_file *file)
{
	file->zero_preamble = true;
	file->modified = true;
}

/* Both writers copy the source's preamble; overwrite it in the output. */
static int clear_preamble(struct dicom_file *file, int fd, struct error *err)
{
	static const char zeros[128] = { 0 };

	if (!file->zero_preamble)
		return 0;
	if (pwrite(fd, zeros, sizeof(zeros), 0) != (ssize_t)sizeof(zeros))
		return error_set(err, ERROR_TRANSIENT, saved_errno(),
				 "cannot write DICOM file");
	return 0;
}

/*
 * What DCMTK encodes goes to the output descriptor through one buffer,
 * in as few write(2) calls as the file has buffers (one for a small
 * file), with the preamble zeroed on its way out when asked. Through a
 * FILE it took dup, fcntl, a write per 4 KiB, close and a pwrite of the
 * preamble afterwards, and a locked fwrite per tag, length and value.
 * The buffer is bounded: a file of 500 MB of pixel data is not held.
 */
namespace {

class FdConsumer : public DcmConsumer {
public:
	FdConsumer(int fd, bool zero_preamble) : fd_(fd), zero_(zero_preamble)
	{
		buf_.reserve(BUFFER);
	}
	OFBool good() const override { return errno_ == 0; }
	OFCondition status() const override
	{
		return errno_ == 0 ? EC_Normal : EC_StreamNotifyClient;
	}
	OFBool isFlushed() const override { return buf_.empty(); }
	offile_off_t avail() const override { return 0x7fffffff; }
	offile_off_t write(const void *buf, offile_off_t len) override
	{
		if (errno_ != 0 || len <= 0)
			return 0;
		const char *p = static_cast<const char *>(buf);
		size_t n = static_cast<size_t>(len);

		if (buf_.size() + n > BUFFER)
			flush();
		if (errno_ == 0 && n >= BUFFER)
			put(p, n);	/* large values skip the copy */
		else if (errno_ == 0)
			buf_.append(p, n);
		return errno_ == 0 ? len : 0;
	}
	void flush() override
	{
		if (!buf_.empty() && errno_ == 0) {
			/* Zeroed in place: one write(2), not two. */
			if (zero_ && off_ < PREAMBLE)
				memset(&buf_[0], 0, std::min(buf_.size(),
					static_cast<size_t>(PREAMBLE - off_)));
			put(&buf_[0], buf_.size(), true);
		}
		buf_.clear();
	}
	int error() const { return errno_; }

private:
	static const size_t BUFFER = 256 * 1024;
	static const unsigned PREAMBLE = 128;

	/* Out at offset off_, the preamble's bytes (offsets 0-127) as
	 * zeros when asked and not zeroed already. */
	void put(const char *p, size_t n, bool zeroed = false)
	{
		static const char zeros[PREAMBLE] = { 0 };

		while (n > 0 && errno_ == 0) {
			size_t step = n;
			const char *from = p;

			if (zero_ && !zeroed && off_ < PREAMBLE) {
				step = std::min(n, static_cast<size_t>(PREAMBLE - off_));
				from = zeros;
			}
			ssize_t w = ::write(fd_, from, step);
			if (w == -1 && errno == EINTR)
				continue;
			if (w <= 0) {
				errno_ = w == -1 && errno != 0 ? errno : EIO;
				return;
			}
			off_ += static_cast<unsigned long long>(w);
			p += w;
			n -= static_cast<size_t>(w);
		}
	}

	int fd_;
	bool zero_;
	int errno_ = 0;
	unsigned long long off_ = 0;
	std::string buf_;
};

class FdOutputStream : public DcmOutputStream {
public:
	FdOutputStream(int fd, bool zero_preamble)
		: DcmOutputStream(&consumer_), consumer_(fd, zero_preamble) {}
	/* Everything out. A deflate filter's flush() does not flush the
	 * consumer behind it: without this a deflated dataset (and the
	 * meta header before it) stayed in the buffer. */
	void finish()
	{
		flush();
		consumer_.flush();
	}
	int error() const { return consumer_.error(); }

private:
	FdConsumer consumer_;
};

} /* namespace */

static int save_fd(struct dicom_file *file, int fd, struct error *err);

extern "C" int dicom_save_fd(struct dicom_file *file, int fd, struct error *err)
{
	return save_fd(file, fd, err);
}

static int save_fd(struct dicom_file *file, int fd, struct error *err)
{
	try {
		/* Spliced: the source's bytes but for the edited values,
		 * whatever the meta header says (dicom_meta_disagreement()). */
		if (file->light)
			return complete(file, err) == -1 ||
			       light_save(file, fd, err) == -1 ? -1 :
			       clear_preamble(file, fd, err);
		if (promote(file, err) == -1)
			return -1;
		if (file->c != nullptr)
			return ds_save_fd(file->c, fd, file->zero_preamble, err);
		OFCondition cond;
		int werr;
		bool flushed;
		{
			FdOutputStream out(fd, file->zero_preamble);
			DcmWriteCache cache;
			file->format().transferInit();
			cond = file->format().write(out, EXS_Unknown, EET_UndefinedLength,
						  &cache, EGL_recalcGL, EPD_noChange,
						  0, 0, 0, EWM_createNewMeta);
			file->format().transferEnd();
			out.finish();
			werr = out.error();
			flushed = out.isFlushed();
		}
		/* A write that failed (full disk, quota, read-only or broken
		 * output) is worth a retry: the descriptor's errno says so.
		 * Any other failure is the object's (a value DCMTK cannot
		 * encode), and a retry would fail the same way forever. */
		if (werr != 0)
			return error_set(err, ERROR_TRANSIENT, werr,
					 "cannot write DICOM file");
		/* Bytes held back anywhere would make a short file. */
		if (cond.good() && !flushed)
			return error_set(err, ERROR_TRANSIENT, 0,
					 "cannot write DICOM file (not all written)");
		if (cond.bad() && cond == EC_StreamNotifyClient)
			return fail(err, ERROR_TRANSIENT, EIO,
				    "cannot write DICOM file", cond);
		if (cond.bad())
			return fail(err, ERROR_INPUT, 0, "cannot encode DICOM file",
				    cond);
		return 0;
	} catch (...) {
		return error_set(err, ERROR_TRANSIENT, 0, "cannot write DICOM file");
	}
}

/* ---- the dictionary, for --check-config ---- */

static bool standard_entry_nocase(const DcmDictEntry *e, const char *keyword,
				  char *buf, size_t len)
{
	const char *name = e->getTagName();

	if (e->getGroup() % 2 != 0 || e->getPrivateCreator() != NULL ||
	    name == NULL || strcasecmp(name, keyword) != 0)
		return false;
	snprintf(buf, len, "%s", name);
	return true;
}

extern "C" int dicom_standard_keyword_nocase(const char *keyword, char *buf,
					     size_t len)
{
	try {
		/* The iterators are not const; only read under the lock. */
		DcmDataDictionary &dict =
			const_cast<DcmDataDictionary &>(dcmDataDict.rdlock());
		bool found = false;

		for (DcmHashDictIterator it = dict.normalBegin();
		     !found && it != dict.normalEnd(); ++it)
			found = standard_entry_nocase(*it, keyword, buf, len);
		for (DcmDictEntryListIterator it = dict.repeatingBegin();
		     !found && it != dict.repeatingEnd(); ++it)
			found = standard_entry_nocase(*it, keyword, buf, len);
		dcmDataDict.rdunlock();
		return found ? 0 : -1;
	} catch (...) {
		return -1;
	}
}
