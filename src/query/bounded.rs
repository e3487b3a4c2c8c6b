//! `repeat`, `lpad`, `rpad` and `replace` with a bound on what one call may build.
//!
//! Scalar functions allocate their output outside DataFusion's memory pool,
//! and these four make strings far larger than their inputs: a 30-byte query
//! `SELECT repeat('x', 2147483647)` asks for 2 GiB. Each is replaced by a
//! wrapper that computes, before calling the built-in, the most its output can
//! take (over every row of the call) and refuses the call above the bound.
//! Other string functions grow at most with the sum of their inputs.

use datafusion::arrow::array::{Array, AsArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) × n` bytes.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters, at most 4 bytes each.
    Pad,
    /// `replace(s, from, to)`: at most `len(s) + (len(s) + 1) × len(to)`
    /// bytes (an empty `from` matches between every two characters).
    Replace,
}

const BOUNDED: [(&str, Growth); 4] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
];

/// Replaces the built-in `repeat`, `lpad`, `rpad` and `replace` of `ctx` by
/// versions that refuse to build more than `max_bytes` in one call.
pub fn register(ctx: &SessionContext, max_bytes: usize) -> Result<()> {
    for (name, growth) in BOUNDED {
        let inner = ctx.udf(name)?.as_ref().clone();
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner,
            growth,
            max_bytes: max_bytes as u64,
        }));
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    max_bytes: u64,
}

/// One argument, per row: a scalar is the same for every row.
enum PerRow {
    Same(Option<i64>),
    Each(Int64Array),
}

impl PerRow {
    fn get(&self, row: usize) -> i64 {
        let value = match self {
            PerRow::Same(value) => *value,
            PerRow::Each(array) => {
                (row < array.len() && !array.is_null(row)).then(|| array.value(row))
            }
        };
        value.unwrap_or(0).max(0)
    }
}

fn as_int64(array: &dyn Array) -> Result<Int64Array> {
    Ok(cast(array, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// The byte length of a string argument.
fn byte_lengths(arg: &ColumnarValue) -> Result<PerRow> {
    Ok(match arg {
        ColumnarValue::Scalar(value) => PerRow::Same(
            value
                .try_as_str()
                .flatten()
                .map(|s| i64::try_from(s.len()).unwrap_or(i64::MAX)),
        ),
        ColumnarValue::Array(array) => PerRow::Each(as_int64(&length(array)?)?),
    })
}

/// An integer argument (a count or a length).
fn integers(arg: &ColumnarValue) -> Result<PerRow> {
    Ok(match arg {
        ColumnarValue::Scalar(ScalarValue::Int64(value)) => PerRow::Same(*value),
        ColumnarValue::Scalar(value) => match value.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(value) => PerRow::Same(value),
            _ => PerRow::Same(None),
        },
        ColumnarValue::Array(array) => PerRow::Each(as_int64(array)?),
    })
}

impl Bounded {
    /// The most the call's output can take, in bytes, saturating.
    fn most_bytes(&self, args: &[ColumnarValue], number_rows: usize) -> Result<u64> {
        let (first, second) = match self.growth {
            Growth::Repeat => (args.first().map(byte_lengths), args.get(1).map(integers)),
            Growth::Pad => (None, args.get(1).map(integers)),
            Growth::Replace => (
                args.first().map(byte_lengths),
                args.get(2).map(byte_lengths),
            ),
        };
        let first = first.transpose()?.unwrap_or(PerRow::Same(Some(1)));
        let second = second.transpose()?.unwrap_or(PerRow::Same(None));
        // Scalars only: the output is one scalar; any array argument (even
        // one not counted, like `lpad`'s string) makes one value per row.
        let any_array = args.iter().any(|a| matches!(a, ColumnarValue::Array(_)));
        let rows = if any_array { number_rows } else { 1 };
        let mut total: u64 = 0;
        for row in 0..rows {
            let (a, b) = (first.get(row) as u64, second.get(row) as u64);
            let bytes = match self.growth {
                Growth::Repeat => a.saturating_mul(b),
                Growth::Pad => b.saturating_mul(4),
                Growth::Replace => a.saturating_add(a.saturating_add(1).saturating_mul(b)),
            };
            total = total.saturating_add(bytes);
            if total > self.max_bytes {
                break;
            }
        }
        Ok(total)
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let most = self.most_bytes(&args.args, args.number_rows)?;
        if most > self.max_bytes {
            return exec_err!(
                "{}() would build up to {most} bytes in one call, over query.max_result_mib ({} MiB)",
                self.name(),
                self.max_bytes / (1024 * 1024)
            );
        }
        self.inner.invoke_with_args(args)
    }
}
