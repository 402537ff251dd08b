/* test_deid_rules.c - every row of PS3.15 Table E.1-1 (the CSV in data/)
 * is in the compiled rules table with the same actions, and the table's
 * order supports binary search. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "deid_rules.h"

#define CSV_PATH DICOMSORT_SOURCE_DIR "/data/ps3.15-table-e.1-1.csv"
#define MAX_FIELDS 16

static const char *const action_codes[] = {
	[DEID_ACT_NONE] = "", [DEID_ACT_K] = "K", [DEID_ACT_X] = "X",
	[DEID_ACT_Z] = "Z", [DEID_ACT_D] = "D", [DEID_ACT_C] = "C",
	[DEID_ACT_U] = "U", [DEID_ACT_XZ] = "X/Z", [DEID_ACT_XD] = "X/D",
	[DEID_ACT_XZD] = "X/Z/D", [DEID_ACT_ZD] = "Z/D", [DEID_ACT_XZU] = "X/Z/U*",
};

/* Split one CSV line (quotes, no embedded newlines) into fields, in place. */
static size_t split_csv(char *line, char **fields)
{
	size_t n = 0;
	char *out = line;

	fields[n++] = out;
	for (char *p = line; *p && *p != '\n' && *p != '\r'; p++) {
		if (*p == '"') {
			for (p++; *p && !(*p == '"' && p[1] != '"'); p++) {
				if (*p == '"')
					p++;
				*out++ = *p;
			}
		} else if (*p == ',' && n < MAX_FIELDS) {
			*out++ = '\0';
			fields[n++] = out;
		} else {
			*out++ = *p;
		}
	}
	*out = '\0';
	return n;
}

static void tag_of(const char *text, uint32_t *tag, uint32_t *mask, int *priv)
{
	*tag = *mask = 0;
	*priv = strncmp(text, "(gggg", 5) == 0;
	if (*priv)
		return;
	for (const char *p = text; *p; p++) {
		int v;

		if (*p == '(' || *p == ')' || *p == ',')
			continue;
		*tag <<= 4;
		*mask <<= 4;
		if (*p == 'x' || *p == 'X')
			continue;
		sscanf((char[]){ *p, 0 }, "%x", &v);
		*tag |= (uint32_t)v;
		*mask |= 0xf;
	}
}

static const struct deid_rule *lookup(uint32_t tag, uint32_t mask, int priv)
{
	for (size_t i = 0; i < deid_rules_count; i++)
		if (deid_rules[i].tag == tag && deid_rules[i].mask == mask &&
		    deid_rules[i].private_row == priv)
			return &deid_rules[i];
	return NULL;
}

static void every_csv_row_is_implemented(void **state)
{
	FILE *f = fopen(CSV_PATH, "r");
	char line[1024], *fields[MAX_FIELDS];
	size_t rows = 0, missing = 0;

	(void)state;
	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));	/* header */
	while (fgets(line, sizeof(line), f) != NULL) {
		const struct deid_rule *r;
		uint32_t tag, mask;
		int priv;

		assert_int_equal(split_csv(line, fields), 14);
		tag_of(fields[0], &tag, &mask, &priv);
		rows++;
		r = lookup(tag, mask, priv);
		if (r == NULL) {
			print_error("row %zu %s %s: not implemented\n", rows,
				    fields[0], fields[1]);
			missing++;
			continue;
		}
		assert_string_equal(action_codes[r->basic], fields[3]);
		for (int c = 0; c < DEID_COL_COUNT; c++)
			assert_string_equal(action_codes[r->option[c]], fields[4 + c]);
	}
	fclose(f);
	assert_int_equal(missing, 0);
	assert_int_equal(rows, deid_rules_count);
	print_message("coverage: %zu rows implemented / %zu rows in the CSV\n",
		      rows - missing, rows);
}

static void exact_rules_are_sorted_and_unique(void **state)
{
	(void)state;
	for (size_t i = 1; i < deid_rules_exact_count; i++)
		assert_true(deid_rules[i - 1].tag < deid_rules[i].tag);
	for (size_t i = 0; i < deid_rules_exact_count; i++)
		assert_int_equal(deid_rules[i].mask, 0xffffffffu);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(every_csv_row_is_implemented),
		cmocka_unit_test(exact_rules_are_sorted_and_unique),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
