// Host replacements of the CUB device algorithms the .cu files use, with CUB's contract, for the SIMT
// harness (csrc/simt/shim/cub/cub.cuh). DeviceRadixSort::SortPairs: a temp-storage size query when
// d_temp_storage is null; otherwise an LSD radix sort, stable, that orders by key bits
// [begin_bit, end_bit) only and moves whole keys and their values to the outputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "simt.h"

namespace cub {

struct DeviceRadixSort {
    template <typename K, typename V>
    static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* keys_in, K* keys_out,
                                 const V* values_in, V* values_out, int64_t num_items, int begin_bit = 0,
                                 int end_bit = int(sizeof(K) * 8), cudaStream_t = nullptr) {
        static_assert(std::is_unsigned_v<K>, "CUB sorts unsigned keys here (the callers cast)");
        // CUB needs room for a second copy of keys and values; ask for the same, and use it.
        const size_t need = size_t(num_items) * (sizeof(K) + sizeof(V)) + 1;
        if (d_temp_storage == nullptr) {
            temp_storage_bytes = need;
            return cudaSuccess;
        }
        if (temp_storage_bytes < need)
            throw std::runtime_error("cub::DeviceRadixSort::SortPairs (SIMT harness): temp storage of " +
                                     std::to_string(temp_storage_bytes) + " bytes, " + std::to_string(need) + " needed");
        if (begin_bit < 0 || end_bit > int(sizeof(K) * 8) || begin_bit > end_bit)
            throw std::runtime_error("cub::DeviceRadixSort::SortPairs (SIMT harness): bad bit range");
        K* tk = static_cast<K*>(d_temp_storage);
        V* tv = reinterpret_cast<V*>(static_cast<unsigned char*>(d_temp_storage) + size_t(num_items) * sizeof(K));
        std::memcpy(keys_out, keys_in, sizeof(K) * num_items);
        std::memcpy(values_out, values_in, sizeof(V) * num_items);
        constexpr int kDigit = 8;
        std::vector<int64_t> count(size_t(1) << kDigit);
        for (int shift = begin_bit; shift < end_bit; shift += kDigit) {
            const int bits = end_bit - shift < kDigit ? end_bit - shift : kDigit;
            const K digit_mask = K((K(1) << bits) - 1);
            std::fill(count.begin(), count.end(), 0);
            for (int64_t i = 0; i < num_items; ++i) ++count[(keys_out[i] >> shift) & digit_mask];
            int64_t sum = 0;
            for (auto& c : count) {
                const int64_t n = c;
                c = sum;
                sum += n;
            }
            for (int64_t i = 0; i < num_items; ++i) {  // in order: stable
                const int64_t at = count[(keys_out[i] >> shift) & digit_mask]++;
                tk[at] = keys_out[i];
                tv[at] = values_out[i];
            }
            std::memcpy(keys_out, tk, sizeof(K) * num_items);
            std::memcpy(values_out, tv, sizeof(V) * num_items);
        }
        return cudaSuccess;
    }
};

}  // namespace cub
