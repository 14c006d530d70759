/* Conversions between f32, f16 and bf16 against known bit patterns. */
#include "airavata.h"
#include "check.h"

static void test_bf16_round_trip(void) {
    CHECK(av_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(av_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(av_f32_to_bf16(-2.0f) == 0xc000);
    /* 1 + 2^-8 lies exactly between two bf16 values: ties go to even. */
    CHECK(av_f32_to_bf16(1.00390625f) == 0x3f80);
    /* 1 + 3*2^-8 rounds up to the even neighbour 1 + 2^-6. */
    CHECK(av_f32_to_bf16(1.01171875f) == 0x3f82);
}

static void test_f16_known_values(void) {
    CHECK(av_f32_to_f16(1.0f) == 0x3c00);
    CHECK(av_f32_to_f16(-2.5f) == 0xc100);
    CHECK(av_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(av_f32_to_f16(70000.0f) == 0x7c00);
    CHECK(av_f32_to_f16(5.9604645e-8f) == 0x0001); /* smallest subnormal */
    CHECK(av_f16_to_f32(0x0001) == 5.9604645e-8f);
    CHECK(av_f16_to_f32(0x3555) == 0.333251953125f);
}

static void test_f16_all_values_round_trip(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint16_t v = (uint16_t)h;
        if (((v >> 10) & 0x1f) == 0x1f && (v & 0x3ff)) continue; /* NaN payloads */
        if (av_f32_to_f16(av_f16_to_f32(v)) != v) bad++;
    }
    CHECK_MSG(bad == 0, "%d f16 values did not round-trip", bad);
}

int main(void) {
    RUN(test_bf16_round_trip);
    RUN(test_f16_known_values);
    RUN(test_f16_all_values_round_trip);
    return CHECK_DONE();
}
