-- Doubling a string until memory runs out.
local s = "xxxxxxxx"
while true do s = s .. s end
