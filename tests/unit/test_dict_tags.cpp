/*
 * test_dict_tags - the C backend's dictionary (src/dict_tags.h, generated
 * by scripts/gen-dict-tags; ds_dictionary()) answers every tag as the
 * installed DCMTK dictionary does: the keyword and the VR name of
 * DcmTag(group, element), for every entry of the dictionary without a
 * private creator, for tags inside its repeating ranges and for a sweep
 * of tags no entry names. C++: it asks DCMTK directly.
 */
#include "dataset.h"
#include "dicomsort/tag.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcdicent.h>
#include <dcmtk/dcmdata/dctag.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static unsigned long checked, failed;

static void check(Uint16 group, Uint16 element)
{
	DcmTag t(group, element);
	const char *name = t.getTagName();
	const char *dcmtk_keyword = name && strcmp(name, DcmTag_ERROR_TagName) ? name : nullptr;
	const char *dcmtk_vr = t.getVR().getVRName();
	const char *vr = nullptr;
	const char *keyword = ds_dictionary(DCM_TAG(group, element), &vr);

	checked++;
	bool same = strcmp(vr, dcmtk_vr) == 0 &&
		    (keyword == nullptr) == (dcmtk_keyword == nullptr) &&
		    (keyword == nullptr || strcmp(keyword, dcmtk_keyword) == 0);
	if (!same && failed++ < 20)
		fprintf(stderr, "(%04x,%04x): C %s %s, DCMTK %s %s\n", group, element,
			vr, keyword ? keyword : "-", dcmtk_vr,
			dcmtk_keyword ? dcmtk_keyword : "-");
}

/* A few tags of a repeating entry: its corners and middle. */
static void check_range(const DcmDictEntry *e)
{
	Uint16 gs[] = { e->getGroup(), e->getUpperGroup(),
			static_cast<Uint16>((e->getGroup() + e->getUpperGroup()) / 2) };
	Uint16 es[] = { e->getElement(), e->getUpperElement(),
			static_cast<Uint16>((e->getElement() + e->getUpperElement()) / 2) };

	for (Uint16 g : gs)
		for (Uint16 el : es)
			for (int d = 0; d < 2; d++)
				check(static_cast<Uint16>(g + d), static_cast<Uint16>(el + d));
}

/* ds_tag_from_keyword() answers only where DCMTK's findTagFromName()
 * gives the same tag: every keyword of the dictionary, asked of both. */
static unsigned long keywords_known, keywords_differ;

static void check_keyword(const char *name)
{
	uint32_t tag = 0;
	DcmTag t;

	if (name == nullptr || ds_tag_from_keyword(name, &tag) != 1)
		return;
	keywords_known++;
	if (DcmTag::findTagFromName(name, t).bad() ||
	    DCM_TAG(t.getGroup(), t.getElement()) != tag) {
		if (keywords_differ++ < 20)
			fprintf(stderr, "%s: C (%04x,%04x), DCMTK differs\n", name,
				DCM_GROUP(tag), DCM_ELEMENT(tag));
	}
}

/* What layouts name must be known without DCMTK; what is not a single
 * standard keyword is left to DCMTK. */
static bool keyword_cases(void)
{
	static const char *const layout[] = {
		"PatientID", "StudyDate", "SeriesNumber", "SeriesDescription",
		"Modality", "StudyInstanceUID", "SeriesInstanceUID",
		"SOPInstanceUID", "InstanceNumber", "PatientName", "AccessionNumber",
	};
	static const char *const declined[] = {
		"", "0010,0020", "NoSuchKeyword", "OverlayRows",
		"patientid",
	};
	uint32_t tag;
	bool ok = true;

	for (const char *kw : layout)
		if (ds_tag_from_keyword(kw, &tag) != 1) {
			fprintf(stderr, "%s: not known to the C tables\n", kw);
			ok = false;
		}
	ok = ok && ds_tag_from_keyword("PatientID", &tag) == 1 &&
	     tag == DCM_TAG(0x0010, 0x0020);
	for (const char *kw : declined)
		if (ds_tag_from_keyword(kw, &tag) != 0) {
			fprintf(stderr, "'%s': answered, DCMTK's to ask\n", kw);
			ok = false;
		}
	return ok;
}

int main()
{
	if (!dcmDataDict.isDictionaryLoaded()) {
		fprintf(stderr, "test_dict_tags: no DCMTK dictionary\n");
		return 1;
	}
	std::vector<const DcmDictEntry *> plain, repeating;
	{
		DcmDataDictionary &dict =
			const_cast<DcmDataDictionary &>(dcmDataDict.rdlock());
		for (DcmHashDictIterator it = dict.normalBegin(); it != dict.normalEnd(); ++it)
			if ((*it)->getPrivateCreator() == nullptr)
				plain.push_back(*it);
		for (DcmDictEntryListIterator it = dict.repeatingBegin();
		     it != dict.repeatingEnd(); ++it)
			if ((*it)->getPrivateCreator() == nullptr)
				repeating.push_back(*it);
		dcmDataDict.rdunlock();
	}
	for (const DcmDictEntry *e : plain)
		check(e->getGroup(), e->getElement());
	{
		DcmDataDictionary &dict =
			const_cast<DcmDataDictionary &>(dcmDataDict.rdlock());
		std::vector<std::string> names;
		for (DcmHashDictIterator it = dict.normalBegin(); it != dict.normalEnd(); ++it)
			names.push_back((*it)->getTagName() ? (*it)->getTagName() : "");
		for (DcmDictEntryListIterator it = dict.repeatingBegin();
		     it != dict.repeatingEnd(); ++it)
			names.push_back((*it)->getTagName() ? (*it)->getTagName() : "");
		dcmDataDict.rdunlock();
		for (const std::string &n : names)
			check_keyword(n.c_str());
	}
	for (const DcmDictEntry *e : repeating)
		check_range(e);
	/* Tags no entry may name: every group's length, private and odd
	 * ranges, items. */
	for (unsigned g = 0; g <= 0xffff; g += 0x0101)
		for (unsigned el = 0; el <= 0xffff; el += 0x0777)
			check(static_cast<Uint16>(g), static_cast<Uint16>(el));
	bool cases = keyword_cases();
	printf("test_dict_tags: %lu tags (%zu entries, %zu ranges), %lu differ; "
	       "%lu keywords known without DCMTK, %lu differ\n",
	       checked, plain.size(), repeating.size(), failed, keywords_known,
	       keywords_differ);
	return failed == 0 && plain.size() > 4000 && keywords_differ == 0 &&
	       keywords_known > 4000 && cases ? 0 : 1;
}
