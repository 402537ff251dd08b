/*
 * deid_rules.h - DICOM PS3.15 Table E.1-1 as data (private to deid.c, the
 * config check and the tests). The table itself is generated:
 * src/deid_rules.c; the lookups below live in deid.c.
 */
#ifndef DICOMSORT_DEID_RULES_H
#define DICOMSORT_DEID_RULES_H

#include <stddef.h>
#include <stdint.h>

/* The action codes of Table E.1-1; see data/README.md. */
enum deid_action {
	DEID_ACT_NONE = 0,	/* empty cell: the option says nothing */
	DEID_ACT_K,
	DEID_ACT_X,
	DEID_ACT_Z,
	DEID_ACT_D,
	DEID_ACT_C,
	DEID_ACT_U,
	DEID_ACT_XZ,
	DEID_ACT_XD,
	DEID_ACT_XZD,
	DEID_ACT_ZD,
	DEID_ACT_XZU,
};

/* The option columns, in the CSV's order. */
enum deid_option_column {
	DEID_COL_SAFE_PRIVATE,
	DEID_COL_UIDS,
	DEID_COL_DEVICE,
	DEID_COL_INSTITUTION,
	DEID_COL_PATIENT_CHARACTERISTICS,
	DEID_COL_FULL_DATES,
	DEID_COL_MODIFIED_DATES,
	DEID_COL_CLEAN_DESCRIPTORS,
	DEID_COL_CLEAN_STRUCTURED_CONTENT,
	DEID_COL_CLEAN_GRAPHICS,
	DEID_COL_COUNT,
};

struct deid_rule {
	uint32_t tag;		/* with the x digits zero */
	uint32_t mask;		/* 0xffffffff for one tag */
	int private_row;	/* "(gggg,eeee) where gggg is odd" */
	enum deid_action basic;
	enum deid_action option[DEID_COL_COUNT];
	const char *keyword;
};

/* Exact tags come first, sorted by tag (binary search), then the masked
 * rows, then the private row. */
extern const struct deid_rule deid_rules[];
extern const size_t deid_rules_count;
extern const size_t deid_rules_exact_count;

/** The row for a tag of an even group, or NULL. */
const struct deid_rule *deid_rule_for(uint32_t tag);

/** How much of a value an action keeps: 2 for K, 1 for C, 0 otherwise. */
int deid_retention(enum deid_action act);

/** The row's action under the chosen options: of those that name the row,
 *  the one that keeps least wins; *column says which (-1: Basic). */
enum deid_action deid_rule_action(const struct deid_rule *r,
				  unsigned options, int *column);

#endif
