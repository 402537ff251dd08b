/* test_layout.c - templates reproduce the original tree, and no value can
 * make a path that is absolute, has "." or ".." or leaves the root. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "dicomsort/layout.h"

static char scratch[PATH_MAX];

static int make_scratch(void **state)
{
	const char *env = getenv("DICOMSORT_TEST_TMP");
	char cmd[PATH_MAX + 16], real[PATH_MAX];

	(void)state;
	if (env != NULL && *env != '\0') {
		snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", env);
		if (system(cmd) != 0)
			return -1;
		snprintf(scratch, sizeof(scratch), "%s/test_layout.XXXXXX", env);
	} else {
		snprintf(scratch, sizeof(scratch), "/tmp/test_layout.XXXXXX");
	}
	if (mkdtemp(scratch) == NULL || realpath(scratch, real) == NULL)
		return -1;
	/* assert_stays_inside() compares against the resolved path. */
	snprintf(scratch, sizeof(scratch), "%s", real);
	return 0;
}

static int drop_scratch(void **state)
{
	char cmd[PATH_MAX + 16];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch);
	return system(cmd) == 0 ? 0 : -1;
}

/* The values of one object: keyword/value pairs, NULL-terminated. */
struct object {
	const char *const *pairs;
	unsigned calls;
	char scratch[512];	/* reused: values live until the next call */
};

static const char *value_of(void *ctx, const char *keyword)
{
	struct object *o = ctx;

	o->calls++;
	for (size_t i = 0; o->pairs[i] != NULL; i += 2) {
		if (strcmp(o->pairs[i], keyword) != 0)
			continue;
		if (o->pairs[i + 1] == NULL)
			return NULL;
		/* Like a DICOM reader: one buffer, overwritten each call. */
		snprintf(o->scratch, sizeof(o->scratch), "%s", o->pairs[i + 1]);
		return strlen(o->pairs[i + 1]) < sizeof(o->scratch) ?
		       o->scratch : o->pairs[i + 1];
	}
	return NULL;
}

static struct layout *compile_ok(const char *tmpl)
{
	struct error err = ERROR_INIT;
	struct layout *l = NULL;

	if (layout_compile(&l, tmpl, &err) != 0)
		fail_msg("'%s' did not compile: %s", tmpl, err.msg);
	assert_non_null(l);
	return l;
}

static void expand_ok(const char *tmpl, const char *const *pairs, char *out,
		      size_t outlen)
{
	struct layout *l = compile_ok(tmpl);
	struct error err = ERROR_INIT;
	struct object o = { pairs, 0, "" };

	if (layout_expand(l, value_of, &o, out, outlen, &err) != 0)
		fail_msg("'%s' did not expand: %s", tmpl, err.msg);
	assert_int_equal(o.calls, layout_placeholder_count(l));
	layout_free(l);
}

static void expect(const char *tmpl, const char *const *pairs, const char *want)
{
	char out[PATH_MAX];

	expand_ok(tmpl, pairs, out, sizeof(out));
	assert_string_equal(out, want);
}

static bool valid_utf8(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	while (*s) {
		size_t n = *s < 0x80 ? 1 : *s >= 0xf0 ? 4 : *s >= 0xe0 ? 3 :
			   *s >= 0xc2 ? 2 : 0;

		if (n == 0)
			return false;
		for (size_t i = 1; i < n; i++)
			if ((s[i] & 0xc0) != 0x80)
				return false;
		s += n;
	}
	return true;
}

/* Every property layout.h promises of an expanded path. */
static void assert_safe_path(const char *path, size_t components)
{
	const char *p = path;
	size_t n = 0;

	assert_true(path[0] != '/');
	assert_true(valid_utf8(path));
	for (;;) {
		size_t len = strcspn(p, "/");

		n++;
		if (len == 0 || len > LAYOUT_COMPONENT_MAX)
			fail_msg("bad component length %zu in '%s'", len, path);
		if (p[0] == '.')
			fail_msg("component starts with '.' in '%s'", path);
		for (size_t i = 0; i < len; i++)
			if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
				fail_msg("control character in '%s'", path);
		if (p[len] == '\0')
			break;
		p += len + 1;
	}
	assert_int_equal(n, components);
}

/* Create the path below scratch and check where it really is. */
static void assert_stays_inside(const char *rel)
{
	char path[PATH_MAX], real[PATH_MAX];
	size_t base = (size_t)snprintf(path, sizeof(path), "%s/", scratch);

	assert_true(base + strlen(rel) < sizeof(path));
	strcpy(path + base, rel);
	for (char *p = path + base; ; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;

			*p = '\0';
			if (mkdir(path, 0700) == -1 && errno != EEXIST)
				fail_msg("mkdir %s: %s", path, strerror(errno));
			*p = c;
			if (c == '\0')
				break;
		}
	}
	assert_non_null(realpath(path, real));
	assert_int_equal(strncmp(real, scratch, strlen(scratch)), 0);
	assert_int_equal(real[strlen(scratch)], '/');
	assert_string_equal(real + strlen(scratch) + 1, rel);
}

static void default_template_reproduces_the_original_tree(void **state)
{
	static const char *const obj[] = {
		"PatientID", "PAT001", "StudyDate", "20240101",
		"SeriesNumber", "3", "SeriesDescription", "T1 MPRAGE sag.1",
		NULL,
	};
	struct layout *l = compile_ok(LAYOUT_DEFAULT_DIRS);

	(void)state;
	assert_int_equal(layout_component_count(l), 3);
	assert_int_equal(layout_placeholder_count(l), 4);
	assert_string_equal(layout_placeholder(l, 0), "PatientID");
	assert_string_equal(layout_placeholder(l, 1), "StudyDate");
	assert_string_equal(layout_placeholder(l, 2), "SeriesNumber");
	assert_string_equal(layout_placeholder(l, 3), "SeriesDescription");
	assert_null(layout_placeholder(l, 4));
	layout_free(l);
	expect(LAYOUT_DEFAULT_DIRS, obj, "PAT001/20240101/3_T1_MPRAGE_sag_1");
}

static void typical_values_as_the_original_had_them(void **state)
{
	static const char *const obj[] = {
		"PatientID", "12345678", "StudyDate", "19991231",
		"SeriesNumber", "1001",
		"SeriesDescription", "DWI_b1000 (ADC) *trace* <i>?",
		NULL,
	};
	static const char *const padded[] = {
		"PatientID", " PAT002  ", "StudyDate", "20240229",
		"SeriesNumber", " 12", "SeriesDescription", "Ax T2 FLAIR ",
		NULL,
	};

	(void)state;
	expect(LAYOUT_DEFAULT_DIRS, obj,
	       "12345678/19991231/1001_DWI_b1000_(ADC)_trace_i");
	expect(LAYOUT_DEFAULT_DIRS, padded, "PAT002/20240229/12_Ax_T2_FLAIR");
}

static void missing_and_empty_values_are_unknown(void **state)
{
	static const char *const none[] = { NULL };
	static const char *const empty[] = {
		"PatientID", "", "StudyDate", "   ", "SeriesNumber", NULL,
		"SeriesDescription", " ", NULL,
	};
	static const char *const some[] = { "PatientID", "P", NULL };

	(void)state;
	expect(LAYOUT_DEFAULT_DIRS, none, "UNKNOWN/UNKNOWN/UNKNOWN_UNKNOWN");
	expect(LAYOUT_DEFAULT_DIRS, empty, "UNKNOWN/UNKNOWN/UNKNOWN_UNKNOWN");
	expect(LAYOUT_DEFAULT_DIRS, some, "P/UNKNOWN/UNKNOWN_UNKNOWN");
}

/* A value that sanitizes to nothing is not "missing" (the original kept
 * "3_"), but a component left empty still becomes UNKNOWN. */
static void values_emptied_by_sanitizing(void **state)
{
	static const char *const obj[] = {
		"PatientID", "???", "StudyDate", "\t\x01",
		"SeriesNumber", "3", "SeriesDescription", "**",
		NULL,
	};

	(void)state;
	expect(LAYOUT_DEFAULT_DIRS, obj, "UNKNOWN/UNKNOWN/3_");
}

static const char *const hostile[] = {
	"../../../../tmp/escape", "..", ".", "/", "//", "/etc/passwd",
	"a/../../b", "../", "./.", "...", ". .", " .. ", ".\\..\\..",
	"..\\..\\windows", "\x01..", "..\x7f", ".\t.", "\xff..", "~",
	"$(rm -rf /)", "a\nb/../..", "\xc0\xae\xc0\xae/", "%2e%2e%2f",
	"\xe2\x80\xa4\xe2\x80\xa4", ".hidden", ".dicomsort.tmp.123", "",
};

static void traversal_values_never_escape(void **state)
{
	static const char *const keys[] = {
		"PatientID", "StudyDate", "SeriesNumber", "SeriesDescription",
	};
	static const char *const tmpls[] = {
		LAYOUT_DEFAULT_DIRS, "{PatientID}", "{SeriesDescription}",
		"{PatientID}{StudyDate}/{SeriesNumber}",
		"x/{SeriesNumber}/{SeriesDescription}/",
	};
	char out[PATH_MAX];

	(void)state;
	for (size_t t = 0; t < sizeof(tmpls) / sizeof(tmpls[0]); t++) {
		struct layout *l = compile_ok(tmpls[t]);
		size_t comps = layout_component_count(l);

		layout_free(l);
		for (size_t h = 0; h < sizeof(hostile) / sizeof(hostile[0]); h++) {
			const char *obj[9];

			/* The same hostile value in every field at once. */
			for (size_t k = 0; k < 4; k++) {
				obj[2 * k] = keys[k];
				obj[2 * k + 1] = hostile[h];
			}
			obj[8] = NULL;
			expand_ok(tmpls[t], obj, out, sizeof(out));
			assert_safe_path(out, comps);
			assert_stays_inside(out);
		}
	}
}

static void traversal_values_exactly(void **state)
{
	static const char *const obj[] = {
		"PatientID", "../../../../tmp/escape", "StudyDate", "..",
		"SeriesNumber", ".", "SeriesDescription", "a/../../b",
		NULL,
	};
	static const char *const obj2[] = {
		"PatientID", "/etc/passwd", "StudyDate", "./.",
		"SeriesNumber", "1.2", "SeriesDescription", "../x",
		NULL,
	};

	(void)state;
	expect(LAYOUT_DEFAULT_DIRS, obj, "________tmpescape/__/__a____b");
	expect(LAYOUT_DEFAULT_DIRS, obj2, "etcpasswd/__/1.2___x");
	expect("{PatientID}", obj2, "etcpasswd");
	expect("{SeriesDescription}", obj, "a____b");
	expect("{PatientID}", (const char *const[]){ "PatientID", "a/../../b",
						     NULL }, "a....b");
}

static void leading_dots_become_underscores(void **state)
{
	char out[64];

	(void)state;
	layout_sanitize_component(".hidden", 0, out, sizeof(out));
	assert_string_equal(out, "_hidden");
	layout_sanitize_component("...a.b", 0, out, sizeof(out));
	assert_string_equal(out, "___a.b");
	layout_sanitize_component("a.b.", 0, out, sizeof(out));
	assert_string_equal(out, "a.b.");
	layout_sanitize_component("  .x", 0, out, sizeof(out));
	assert_string_equal(out, "_x");
	layout_sanitize_component("..", 1, out, sizeof(out));
	assert_string_equal(out, "__");
}

static void removed_characters(void **state)
{
	static const char *const obj[] = {
		"PatientID", "a*b<c>d:e\"f/g\\h|i?j", NULL,
	};
	char out[64];

	(void)state;
	expect("{PatientID}", obj, "abcdefghij");
	/* '\\' is DICOM's value separator: two values run together. */
	layout_sanitize_component("T1\\T2", 0, out, sizeof(out));
	assert_string_equal(out, "T1T2");
	layout_sanitize_component("a b  c", 0, out, sizeof(out));
	assert_string_equal(out, "a_b__c");
}

static void dot_rule_only_for_series_description(void **state)
{
	static const char *const obj[] = {
		"PatientID", "1.2.3", "StudyInstanceUID", "1.2.840.10008.1",
		"SeriesDescription", "1.2.3", "seriesdescription", "4.5",
		NULL,
	};

	(void)state;
	expect("{PatientID}/{StudyInstanceUID}/{SeriesDescription}.dcm", obj,
	       "1.2.3/1.2.840.10008.1/1_2_3.dcm");
	expect("{seriesdescription}", obj, "4.5");
}

static void control_characters_are_removed(void **state)
{
	static const char *const obj[] = {
		"PatientID", "A\tB\nC\rD\x01" "E\x1f" "F\x7fG\x1bH", NULL,
	};
	char out[64];

	(void)state;
	expect("{PatientID}", obj, "ABCDEFGH");
	/* Only spaces are trimmed; a tab is removed after trimming. */
	layout_sanitize_component("\t X \t", 0, out, sizeof(out));
	assert_string_equal(out, "_X_");
	/* C1 controls are valid UTF-8 characters and stay. */
	layout_sanitize_component("a\xc2\x85" "b", 0, out, sizeof(out));
	assert_string_equal(out, "a\xc2\x85" "b");
}

static void invalid_utf8_becomes_underscores(void **state)
{
	static const struct { const char *in, *want; } cases[] = {
		{ "a\xff" "b", "a_b" },
		{ "M\xfcller", "M_ller" },			/* Latin-1 */
		{ "M\xc3\xbcller", "M\xc3\xbcller" },		/* UTF-8 */
		{ "end\xc3", "end_" },				/* truncated */
		{ "\xe2\x82", "__" },
		{ "\xc0\xaf", "__" },				/* overlong '/' */
		{ "\xe0\x80\xaf", "___" },			/* overlong */
		{ "\xed\xa0\x80", "___" },			/* surrogate */
		{ "\xf4\x90\x80\x80", "____" },			/* > U+10FFFF */
		{ "\x80\x80", "__" },				/* lone tails */
		{ "\xe2\x82\xac", "\xe2\x82\xac" },		/* euro */
		{ "\xf0\x9f\xa7\xa0", "\xf0\x9f\xa7\xa0" },	/* 4 bytes */
		{ "\xed\x9f\xbf", "\xed\x9f\xbf" },		/* U+D7FF */
		{ "\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf" },	/* U+10FFFF */
	};
	char out[64];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		layout_sanitize_component(cases[i].in, 0, out, sizeof(out));
		if (strcmp(out, cases[i].want) != 0)
			fail_msg("case %zu: got '%s'", i, out);
	}
}

static void long_values_are_cut_to_255_bytes(void **state)
{
	char value[301], out[PATH_MAX];
	const char *obj[] = {
		"PatientID", "P", "StudyDate", "D", "SeriesNumber", "3",
		"SeriesDescription", value, NULL,
	};

	(void)state;
	memset(value, 'x', 300);
	value[300] = '\0';
	expand_ok(LAYOUT_DEFAULT_DIRS, obj, out, sizeof(out));
	assert_int_equal(strlen(out), strlen("P/D/") + 255);
	assert_memory_equal(out, "P/D/3_xxx", 9);
	assert_safe_path(out, 3);

	layout_sanitize_component(value, 1, out, sizeof(out));
	assert_int_equal(strlen(out), 255);

	/* A too long component does not end the expansion. */
	obj[1] = value;
	expand_ok(LAYOUT_DEFAULT_DIRS, obj, out, sizeof(out));
	assert_int_equal(strlen(out), 255 + 1 + 1 + 1 + 255);
	assert_memory_equal(out + 256, "D/3_", 4);
	assert_safe_path(out, 3);
}

static void cuts_fall_on_character_boundaries(void **state)
{
	/* 2-, 3- and 4-byte characters after the 2 bytes of "3_". */
	static const struct { const char *ch; size_t want; } cases[] = {
		{ "\xc3\xa9", 2 + 126 * 2 },		/* 254 */
		{ "\xe2\x82\xac", 2 + 84 * 3 },		/* 254 */
		{ "\xf0\x9f\xa7\xa0", 2 + 63 * 4 },	/* 254 */
		{ "a\xe2\x82\xac", 2 + 63 * 4 + 1 },	/* 255 */
	};
	char value[1024], out[PATH_MAX];
	const char *obj[] = {
		"SeriesNumber", "3", "SeriesDescription", value, NULL,
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = strlen(cases[i].ch);

		value[0] = '\0';
		for (size_t k = 0; k + n < 600; k += n)
			strcat(value, cases[i].ch);
		expand_ok("{SeriesNumber}_{SeriesDescription}", obj, out,
			  sizeof(out));
		assert_int_equal(strlen(out), cases[i].want);
		assert_true(valid_utf8(out));
		assert_safe_path(out, 1);
	}

	/* A short buffer cuts the same way. */
	layout_sanitize_component("\xe2\x82\xac\xe2\x82\xac", 0, out, 6);
	assert_string_equal(out, "\xe2\x82\xac");
	/* Nothing fits: still not empty while there is room. */
	layout_sanitize_component("\xe2\x82\xac", 0, out, 3);
	assert_string_equal(out, "UN");
	layout_sanitize_component("", 0, out, 4);
	assert_string_equal(out, "UNK");
	layout_sanitize_component("x", 0, out, 1);
	assert_string_equal(out, "");
}

static void literal_text_is_kept_and_made_safe(void **state)
{
	static const char *const obj[] = { "PatientID", "P1", NULL };

	(void)state;
	expect("study-{PatientID}:x/images", obj, "study-P1:x/images");
	expect("{PatientID}/../x", obj, "P1/__/x");
	expect("./{PatientID}", obj, "_/P1");
	expect(".cache/{PatientID}", obj, "_cache/P1");
	expect("{PatientID}/ spaces kept ", obj, "P1/ spaces kept ");
	expect("D\xc3\xa9j\xc3\xa0/{PatientID}", obj, "D\xc3\xa9j\xc3\xa0/P1");
}

static void braces_escape(void **state)
{
	static const char *const obj[] = { "PatientID", "P1", NULL };
	struct layout *l;

	(void)state;
	expect("{{literal}}/{PatientID}", obj, "{literal}/P1");
	expect("a{{{PatientID}}}b", obj, "a{P1}b");
	expect("{{PatientID}}", obj, "{PatientID}");
	expect("}}{{", obj, "}{");
	l = compile_ok("{{PatientID}}/{{x}}");
	assert_int_equal(layout_placeholder_count(l), 0);
	assert_int_equal(layout_component_count(l), 2);
	layout_free(l);
}

static void slashes_in_templates(void **state)
{
	static const char *const obj[] = { "PatientID", "P1", NULL };
	static const struct { const char *tmpl, *want; size_t comps; } cases[] = {
		{ "a//b/", "a/b", 2 },
		{ "/a", "a", 1 },
		{ "///{PatientID}///", "P1", 1 },
		{ "", "UNKNOWN", 1 },
		{ "/", "UNKNOWN", 1 },
		{ "{PatientID}/{PatientID}", "P1/P1", 2 },
		{ "{PatientID}.dcm", "P1.dcm", 1 },
	};
	struct layout *l;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		l = compile_ok(cases[i].tmpl);
		assert_int_equal(layout_component_count(l), cases[i].comps);
		layout_free(l);
		expect(cases[i].tmpl, obj, cases[i].want);
	}
}

static void bad_templates_are_rejected(void **state)
{
	static const struct { const char *tmpl, *says; } cases[] = {
		{ "{PatientID", "'{' without '}'" },
		{ "{PatientID}/{StudyDate", "'{' without '}'" },
		{ "PatientID}", "'}' without '{'" },
		{ "{PatientID}}", "'}' without '{'" },
		{ "{}", "empty placeholder" },
		{ "a/{}/b", "empty placeholder" },
		{ "{Patient ID}", "'{Patient ID}' is not a DICOM keyword" },
		{ "{Patient-ID}", "is not a DICOM keyword" },
		{ "{../x}", "is not a DICOM keyword" },
		{ "{Patient{ID}}", "is not a DICOM keyword" },
		{ "{\xc3\xa9}", "is not a DICOM keyword" },
		{ "{PatientID}{", "'{' without '}'" },
		{ "a\tb/{PatientID}", "control character 0x09" },
		{ "a\nb", "control character 0x0a" },
		{ "M\xfcller/{PatientID}", "not valid UTF-8" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct error err = ERROR_INIT;
		struct layout *l = NULL;

		if (layout_compile(&l, cases[i].tmpl, &err) != -1)
			fail_msg("case %zu compiled", i);
		assert_null(l);
		assert_int_equal(err.kind, ERROR_SETUP);
		if (strstr(err.msg, "template") == NULL ||
		    strstr(err.msg, cases[i].says) == NULL)
			fail_msg("case %zu: message '%s'", i, err.msg);
	}
}

static void small_output_buffer_is_an_input_error(void **state)
{
	static const char *const obj[] = {
		"PatientID", "PAT001", "StudyDate", "20240101", NULL,
	};
	struct layout *l = compile_ok("{PatientID}/{StudyDate}");
	struct object o = { obj, 0, "" };
	struct error err = ERROR_INIT;
	char out[32];
	size_t need = strlen("PAT001/20240101") + 1;

	(void)state;
	assert_int_equal(layout_expand(l, value_of, &o, out, need, &err), 0);
	assert_string_equal(out, "PAT001/20240101");
	for (size_t len = 0; len < need; len++) {
		memset(out, 'z', sizeof(out));
		error_clear(&err);
		assert_int_equal(layout_expand(l, value_of, &o, out, len, &err), -1);
		assert_int_equal(err.kind, ERROR_INPUT);
		assert_int_equal(err.errnum, ENAMETOOLONG);
		if (len > 0)
			assert_string_equal(out, "");
		assert_int_equal(out[len], 'z');
	}
	layout_free(l);
}

static void sanitize_component_alone(void **state)
{
	char out[300];

	(void)state;
	layout_sanitize_component(NULL, 0, out, sizeof(out));
	assert_string_equal(out, "UNKNOWN");
	layout_sanitize_component("   ", 1, out, sizeof(out));
	assert_string_equal(out, "UNKNOWN");
	layout_sanitize_component("a/b", 0, out, sizeof(out));
	assert_string_equal(out, "ab");
	layout_sanitize_component("///", 0, out, sizeof(out));
	assert_string_equal(out, "UNKNOWN");
	layout_sanitize_component("T1 MPRAGE sag.1", 1, out, sizeof(out));
	assert_string_equal(out, "T1_MPRAGE_sag_1");
	layout_sanitize_component("T1 MPRAGE sag.1", 0, out, sizeof(out));
	assert_string_equal(out, "T1_MPRAGE_sag.1");
}

/* Random bytes in every field keep every promise. */
static void random_values_keep_the_promises(void **state)
{
	uint32_t seed = 12345;
	char values[4][64], out[PATH_MAX];
	const char *obj[] = {
		"PatientID", values[0], "StudyDate", values[1],
		"SeriesNumber", values[2], "SeriesDescription", values[3], NULL,
	};
	/* Bytes that matter, more often than chance would pick them. */
	static const char interesting[] = "./\\ *\x01\x7f\x80\xc3\xa9\xe2\xff";

	(void)state;
	for (int round = 0; round < 20000; round++) {
		for (size_t v = 0; v < 4; v++) {
			size_t len;

			seed = seed * 1103515245u + 12345u;
			len = (seed >> 16) % 12;
			for (size_t i = 0; i < len; i++) {
				seed = seed * 1103515245u + 12345u;
				values[v][i] = (seed >> 24) & 1 ?
					interesting[(seed >> 16) %
						    (sizeof(interesting) - 1)] :
					(char)(1 + (seed >> 16) % 255);
			}
			values[v][len] = '\0';
		}
		expand_ok(LAYOUT_DEFAULT_DIRS, obj, out, sizeof(out));
		assert_safe_path(out, 3);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(default_template_reproduces_the_original_tree),
		cmocka_unit_test(typical_values_as_the_original_had_them),
		cmocka_unit_test(missing_and_empty_values_are_unknown),
		cmocka_unit_test(values_emptied_by_sanitizing),
		cmocka_unit_test(traversal_values_never_escape),
		cmocka_unit_test(traversal_values_exactly),
		cmocka_unit_test(leading_dots_become_underscores),
		cmocka_unit_test(removed_characters),
		cmocka_unit_test(dot_rule_only_for_series_description),
		cmocka_unit_test(control_characters_are_removed),
		cmocka_unit_test(invalid_utf8_becomes_underscores),
		cmocka_unit_test(long_values_are_cut_to_255_bytes),
		cmocka_unit_test(cuts_fall_on_character_boundaries),
		cmocka_unit_test(literal_text_is_kept_and_made_safe),
		cmocka_unit_test(braces_escape),
		cmocka_unit_test(slashes_in_templates),
		cmocka_unit_test(bad_templates_are_rejected),
		cmocka_unit_test(small_output_buffer_is_an_input_error),
		cmocka_unit_test(sanitize_component_alone),
		cmocka_unit_test(random_values_keep_the_promises),
	};

	return cmocka_run_group_tests(tests, make_scratch, drop_scratch);
}
