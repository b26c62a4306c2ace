"""Test data the benchmark tests share."""

# A loop of 10 iterations carrying a [100, 64] float32 buffer: each iteration reads one
# row of it (a fusion that slices) and writes one row back in place (a fusion whose root
# is a dynamic-update-slice of the carried buffer). Outside the loop, one elementwise
# fusion over the whole buffer.
LOOP_HLO = """
HloModule synthetic

%read_row (p0: f32[100,64], p1: s32[]) -> f32[1,64] {
  %p0 = f32[100,64]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %c0 = s32[] constant(0)
  %ds = f32[1,64]{1,0} dynamic-slice(%p0, %p1, %c0), dynamic_slice_sizes={1,64}
  ROOT %neg = f32[1,64]{1,0} negate(%ds)
}

%write_row (q0: f32[100,64], q1: f32[1,64], q2: s32[]) -> f32[100,64] {
  %q0 = f32[100,64]{1,0} parameter(0)
  %q1 = f32[1,64]{1,0} parameter(1)
  %q2 = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %dus = f32[100,64]{1,0} dynamic-update-slice(%q0, %q1, %q2, %z)
}

%double (r0: f32[100,64]) -> f32[100,64] {
  %r0 = f32[100,64]{1,0} parameter(0)
  ROOT %add = f32[100,64]{1,0} add(%r0, %r0)
}

%body (t: (s32[], f32[100,64])) -> (s32[], f32[100,64]) {
  %t = (s32[], f32[100,64]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %buf = f32[100,64]{1,0} get-tuple-element(%t), index=1
  %row = f32[1,64]{1,0} fusion(%buf, %i), kind=kLoop, calls=%read_row
  %new = f32[100,64]{1,0} fusion(%buf, %row, %i), kind=kLoop, calls=%write_row
  ROOT %out = (s32[], f32[100,64]{1,0}) tuple(%i, %new)
}

%cond (u: (s32[], f32[100,64])) -> pred[] {
  %u = (s32[], f32[100,64]{1,0}) parameter(0)
  ROOT %yes = pred[] constant(true)
}

ENTRY %main (x: f32[100,64]) -> f32[100,64] {
  %x = f32[100,64]{1,0} parameter(0)
  %twice = f32[100,64]{1,0} fusion(%x), kind=kLoop, calls=%double
  %zero = s32[] constant(0)
  %init = (s32[], f32[100,64]{1,0}) tuple(%zero, %twice)
  %loop = (s32[], f32[100,64]{1,0}) while(%init), condition=%cond, body=%body, \
backend_config={"known_trip_count":{"n":"10"}}
  ROOT %res = f32[100,64]{1,0} get-tuple-element(%loop), index=1
}
"""
