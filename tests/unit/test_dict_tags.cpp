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
	for (const DcmDictEntry *e : repeating)
		check_range(e);
	/* Tags no entry may name: every group's length, private and odd
	 * ranges, items. */
	for (unsigned g = 0; g <= 0xffff; g += 0x0101)
		for (unsigned el = 0; el <= 0xffff; el += 0x0777)
			check(static_cast<Uint16>(g), static_cast<Uint16>(el));
	printf("test_dict_tags: %lu tags (%zu entries, %zu ranges), %lu differ\n",
	       checked, plain.size(), repeating.size(), failed);
	return failed == 0 && plain.size() > 4000 ? 0 : 1;
}
