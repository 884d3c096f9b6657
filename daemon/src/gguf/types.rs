//! The closed sets a GGUF file draws from: metadata value types, ggml tensor types (with their
//! block geometry, as llama.cpp's `type_traits` table gives it) and llama.cpp's file types
//! (`general.file_type`, the quantization a file was made with).

/// A metadata value's type code, as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8
    String,
    /// 9
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl ValueType {
    /// The type for a code, or `None` for an unknown code.
    pub fn from_code(code: u32) -> Option<ValueType> {
        Some(match code {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// Bytes of a fixed-size value; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<u64> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The fewest bytes one value of this type takes in a file (a string's length prefix, an
    /// array's type and count), used to refuse counts the rest of the file cannot hold.
    pub fn min_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            fixed => fixed.fixed_size().unwrap_or(1),
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "uint8",
            ValueType::I8 => "int8",
            ValueType::U16 => "uint16",
            ValueType::I16 => "int16",
            ValueType::U32 => "uint32",
            ValueType::I32 => "int32",
            ValueType::F32 => "float32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "uint64",
            ValueType::I64 => "int64",
            ValueType::F64 => "float64",
        }
    }
}

/// A ggml tensor type: its name and how many bytes a block of how many elements takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorType {
    /// The code in the file.
    pub code: u32,
    /// llama.cpp's name ("Q4_K", "F16", ...).
    pub name: &'static str,
    /// Elements per block.
    pub block_size: u64,
    /// Bytes per block.
    pub type_size: u64,
}

/// ggml's types that GGUF files may hold (codes 4, 5, 31–33 and 36–38 were removed upstream).
const TENSOR_TYPES: &[TensorType] = &[
    TensorType { code: 0, name: "F32", block_size: 1, type_size: 4 },
    TensorType { code: 1, name: "F16", block_size: 1, type_size: 2 },
    TensorType { code: 2, name: "Q4_0", block_size: 32, type_size: 18 },
    TensorType { code: 3, name: "Q4_1", block_size: 32, type_size: 20 },
    TensorType { code: 6, name: "Q5_0", block_size: 32, type_size: 22 },
    TensorType { code: 7, name: "Q5_1", block_size: 32, type_size: 24 },
    TensorType { code: 8, name: "Q8_0", block_size: 32, type_size: 34 },
    TensorType { code: 9, name: "Q8_1", block_size: 32, type_size: 36 },
    TensorType { code: 10, name: "Q2_K", block_size: 256, type_size: 84 },
    TensorType { code: 11, name: "Q3_K", block_size: 256, type_size: 110 },
    TensorType { code: 12, name: "Q4_K", block_size: 256, type_size: 144 },
    TensorType { code: 13, name: "Q5_K", block_size: 256, type_size: 176 },
    TensorType { code: 14, name: "Q6_K", block_size: 256, type_size: 210 },
    TensorType { code: 15, name: "Q8_K", block_size: 256, type_size: 292 },
    TensorType { code: 16, name: "IQ2_XXS", block_size: 256, type_size: 66 },
    TensorType { code: 17, name: "IQ2_XS", block_size: 256, type_size: 74 },
    TensorType { code: 18, name: "IQ3_XXS", block_size: 256, type_size: 98 },
    TensorType { code: 19, name: "IQ1_S", block_size: 256, type_size: 50 },
    TensorType { code: 20, name: "IQ4_NL", block_size: 32, type_size: 18 },
    TensorType { code: 21, name: "IQ3_S", block_size: 256, type_size: 110 },
    TensorType { code: 22, name: "IQ2_S", block_size: 256, type_size: 82 },
    TensorType { code: 23, name: "IQ4_XS", block_size: 256, type_size: 136 },
    TensorType { code: 24, name: "I8", block_size: 1, type_size: 1 },
    TensorType { code: 25, name: "I16", block_size: 1, type_size: 2 },
    TensorType { code: 26, name: "I32", block_size: 1, type_size: 4 },
    TensorType { code: 27, name: "I64", block_size: 1, type_size: 8 },
    TensorType { code: 28, name: "F64", block_size: 1, type_size: 8 },
    TensorType { code: 29, name: "IQ1_M", block_size: 256, type_size: 56 },
    TensorType { code: 30, name: "BF16", block_size: 1, type_size: 2 },
    TensorType { code: 34, name: "TQ1_0", block_size: 256, type_size: 54 },
    TensorType { code: 35, name: "TQ2_0", block_size: 256, type_size: 66 },
    TensorType { code: 39, name: "MXFP4", block_size: 32, type_size: 17 },
    TensorType { code: 40, name: "NVFP4", block_size: 64, type_size: 36 },
    TensorType { code: 41, name: "Q1_0", block_size: 128, type_size: 18 },
    TensorType { code: 42, name: "Q2_0", block_size: 64, type_size: 18 },
];

impl TensorType {
    /// The type for a code, or `None` for an unknown or removed code.
    pub fn from_code(code: u32) -> Option<TensorType> {
        TENSOR_TYPES.iter().copied().find(|t| t.code == code)
    }
}

/// llama.cpp's name for a `general.file_type` value ("Q4_K_M"), or `None` when unknown.
pub fn file_type_name(file_type: u64) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        40 => "Q1_0",
        41 => "Q2_0",
        _ => return None,
    })
}
